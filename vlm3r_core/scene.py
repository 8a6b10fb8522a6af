"""The scene contract (README "The scene contract") as typed, validated dataclasses.

A scene lives at ``<root>/scenes/<dataset>/<scene_id>/scene.json`` with its video beside it.
Every reader (ScanNet, ScanNet++, ARKitScenes) and the synthetic world produce exactly this.

Conventions: world metres, right-handed, Z up. Cameras use OpenCV axes (x right, y down,
z forward); ``cam_to_world`` is a 4x4 camera-to-world matrix whose translation column is the camera
centre. Object boxes are oriented: ``center`` (3,), ``extent`` (3,) full side lengths along the box
axes, ``rotation`` (3, 3) whose columns are the box axes in world coordinates.

Invalid input raises :class:`SceneValidationError`, whose message names the scene, the field and
the reason. Extra JSON fields are kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlm3r_core import storage
from vlm3r_core.video import probe_video

DATASETS = ("synthetic", "scannet", "scannetpp", "arkitscenes")
SPLITS = ("train", "val", "test")
SCENE_FILE = "scene.json"


class SceneValidationError(ValueError):
    """Raised for a scene that breaks the contract; names the scene, the field and the reason."""

    def __init__(self, scene_id: str, field_name: str, reason: str):
        self.scene_id, self.field_name, self.reason = scene_id, field_name, reason
        super().__init__(f"scene {scene_id!r}: {field_name}: {reason}")


@dataclass(frozen=True)
class Room:
    """Floor polygon ``[[x, y], ...]`` in world metres, floor height, ceiling height above floor."""

    floor_polygon: np.ndarray  # (V, 2)
    floor_z: float
    height: float
    area_m2: float


@dataclass(frozen=True)
class SceneObject:
    instance_id: int
    category: str
    center: np.ndarray  # (3,)
    extent: np.ndarray  # (3,) full side lengths along the box axes
    rotation: np.ndarray  # (3, 3) columns = box axes in world

    def corners(self) -> np.ndarray:
        """(8, 3) world coordinates of the box corners."""
        signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
        return self.center + (signs * (self.extent / 2)) @ self.rotation.T


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float

    def matrix(self) -> np.ndarray:
        """(3, 3) pinhole matrix K."""
        return np.array([[self.fx, 0, self.cx], [0, self.fy, self.cy], [0, 0, 1]], dtype=np.float64)


@dataclass(frozen=True)
class Visibility:
    """An instance seen in a frame: 2D box ``[x0, y0, x1, y1]`` in pixels and visible pixel count."""

    instance_id: int
    bbox_2d: tuple[float, float, float, float]
    pixels: int


@dataclass(frozen=True)
class Frame:
    index: int  # frame number in the video
    timestamp: float  # seconds
    cam_to_world: np.ndarray  # (4, 4)
    intrinsics: Intrinsics
    visible: tuple[Visibility, ...] = ()

    @property
    def camera_center(self) -> np.ndarray:
        """(3,) camera centre in world = translation column of ``cam_to_world``."""
        return self.cam_to_world[:3, 3]


@dataclass(frozen=True)
class VideoInfo:
    uri: str  # relative to the scene folder, or absolute
    fps: float
    num_frames: int
    width: int
    height: int


@dataclass(frozen=True)
class Scene:
    scene_id: str
    dataset: str
    split: str
    room: Room
    objects: tuple[SceneObject, ...]
    video: VideoInfo
    frames: tuple[Frame, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        validate_scene(self)

    def object(self, instance_id: int) -> SceneObject:
        for obj in self.objects:
            if obj.instance_id == instance_id:
                return obj
        raise KeyError(f"scene {self.scene_id!r}: no object with instance_id {instance_id}")

    def video_uri(self, scene_dir: str) -> str:
        """Absolute URI of the video, given the URI of the scene folder."""
        if "://" in self.video.uri or self.video.uri.startswith("/"):
            return self.video.uri
        return storage.join(scene_dir, self.video.uri)

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.extra,
            "scene_id": self.scene_id,
            "dataset": self.dataset,
            "split": self.split,
            "room": {
                "floor_polygon": self.room.floor_polygon.tolist(),
                "floor_z": self.room.floor_z,
                "height": self.room.height,
                "area_m2": self.room.area_m2,
            },
            "objects": [
                {
                    "instance_id": o.instance_id,
                    "category": o.category,
                    "center": o.center.tolist(),
                    "extent": o.extent.tolist(),
                    "rotation": o.rotation.tolist(),
                }
                for o in self.objects
            ],
            "video": {
                "uri": self.video.uri,
                "fps": self.video.fps,
                "num_frames": self.video.num_frames,
                "width": self.video.width,
                "height": self.video.height,
            },
            "frames": [
                {
                    "index": f.index,
                    "timestamp": f.timestamp,
                    "cam_to_world": f.cam_to_world.tolist(),
                    "intrinsics": {
                        "fx": f.intrinsics.fx,
                        "fy": f.intrinsics.fy,
                        "cx": f.intrinsics.cx,
                        "cy": f.intrinsics.cy,
                    },
                    "visible": [
                        {"instance_id": v.instance_id, "bbox_2d": list(v.bbox_2d), "pixels": v.pixels}
                        for v in f.visible
                    ],
                }
                for f in self.frames
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scene:
        """Parses and validates a scene dict (the JSON form)."""
        scene_id = str(d.get("scene_id", "<unknown>"))
        p = _Parser(scene_id)
        room = p.get(d, "room", dict)
        video = p.get(d, "video", dict)
        known = {"scene_id", "dataset", "split", "room", "objects", "video", "frames"}
        return cls(
            scene_id=p.get(d, "scene_id", str),
            dataset=p.get(d, "dataset", str),
            split=p.get(d, "split", str),
            room=Room(
                floor_polygon=p.array(room, "floor_polygon", (-1, 2), "room.floor_polygon"),
                floor_z=p.number(room, "floor_z", "room.floor_z"),
                height=p.number(room, "height", "room.height"),
                area_m2=p.number(room, "area_m2", "room.area_m2"),
            ),
            objects=tuple(
                SceneObject(
                    instance_id=p.get(o, "instance_id", int, f"objects[{i}].instance_id"),
                    category=p.get(o, "category", str, f"objects[{i}].category"),
                    center=p.array(o, "center", (3,), f"objects[{i}].center"),
                    extent=p.array(o, "extent", (3,), f"objects[{i}].extent"),
                    rotation=p.array(o, "rotation", (3, 3), f"objects[{i}].rotation"),
                )
                for i, o in enumerate(p.get(d, "objects", list))
            ),
            video=VideoInfo(
                uri=p.get(video, "uri", str, "video.uri"),
                fps=p.number(video, "fps", "video.fps"),
                num_frames=p.get(video, "num_frames", int, "video.num_frames"),
                width=p.get(video, "width", int, "video.width"),
                height=p.get(video, "height", int, "video.height"),
            ),
            frames=tuple(_parse_frame(p, f, i) for i, f in enumerate(p.get(d, "frames", list))),
            extra={k: v for k, v in d.items() if k not in known},
        )


def _parse_frame(p: _Parser, f: dict, i: int) -> Frame:
    intr = p.get(f, "intrinsics", dict, f"frames[{i}].intrinsics")
    return Frame(
        index=p.get(f, "index", int, f"frames[{i}].index"),
        timestamp=p.number(f, "timestamp", f"frames[{i}].timestamp"),
        cam_to_world=p.array(f, "cam_to_world", (4, 4), f"frames[{i}].cam_to_world"),
        intrinsics=Intrinsics(
            *(p.number(intr, k, f"frames[{i}].intrinsics.{k}") for k in ("fx", "fy", "cx", "cy"))
        ),
        visible=tuple(
            Visibility(
                instance_id=p.get(v, "instance_id", int, f"frames[{i}].visible[{j}].instance_id"),
                bbox_2d=tuple(
                    float(x) for x in p.array(v, "bbox_2d", (4,), f"frames[{i}].visible[{j}].bbox_2d")
                ),
                pixels=p.get(v, "pixels", int, f"frames[{i}].visible[{j}].pixels"),
            )
            for j, v in enumerate(p.get(f, "visible", list, f"frames[{i}].visible"))
        ),
    )


class _Parser:
    """Field access with errors that name the scene and the field."""

    def __init__(self, scene_id: str):
        self.scene_id = scene_id

    def get(self, d: Any, key: str, kind: type, name: str | None = None) -> Any:
        name = name or key
        if not isinstance(d, dict) or key not in d:
            raise SceneValidationError(self.scene_id, name, "missing")
        value = d[key]
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SceneValidationError(
                self.scene_id, name, f"expected {kind.__name__}, got {type(value).__name__}"
            )
        return value

    def number(self, d: Any, key: str, name: str) -> float:
        return self.get(d, key, float, name)

    def array(self, d: Any, key: str, shape: tuple[int, ...], name: str) -> np.ndarray:
        if not isinstance(d, dict) or key not in d:
            raise SceneValidationError(self.scene_id, name, "missing")
        try:
            a = np.asarray(d[key], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise SceneValidationError(self.scene_id, name, f"not a numeric array ({e})") from e
        if a.ndim != len(shape) or any(s != -1 and s != n for s, n in zip(shape, a.shape, strict=True)):
            raise SceneValidationError(self.scene_id, name, f"expected shape {shape}, got {a.shape}")
        return a


def validate_scene(s: Scene) -> None:
    """Checks every rule of the contract; raises :class:`SceneValidationError` on the first breach."""

    def fail(name: str, reason: str):
        raise SceneValidationError(s.scene_id, name, reason)

    if not s.scene_id or "/" in s.scene_id:
        fail("scene_id", f"must be a non-empty name without '/', got {s.scene_id!r}")
    if s.dataset not in DATASETS:
        fail("dataset", f"must be one of {DATASETS}, got {s.dataset!r}")
    if s.split not in SPLITS:
        fail("split", f"must be one of {SPLITS}, got {s.split!r}")

    r = s.room
    if r.floor_polygon.ndim != 2 or r.floor_polygon.shape[1] != 2 or len(r.floor_polygon) < 3:
        fail("room.floor_polygon", f"needs at least 3 [x, y] vertices, got shape {r.floor_polygon.shape}")
    for name, value in (("room.floor_polygon", r.floor_polygon), ("room.floor_z", r.floor_z)):
        if not np.all(np.isfinite(value)):
            fail(name, "non-finite value")
    if not (math.isfinite(r.height) and r.height > 0):
        fail("room.height", f"must be positive and finite, got {r.height}")
    if not (math.isfinite(r.area_m2) and r.area_m2 > 0):
        fail("room.area_m2", f"must be positive and finite, got {r.area_m2}")

    seen_ids: set[int] = set()
    for i, o in enumerate(s.objects):
        where = f"objects[{i}] (instance {o.instance_id})"
        if o.instance_id in seen_ids:
            fail(f"{where}.instance_id", "duplicate instance_id")
        seen_ids.add(o.instance_id)
        if not o.category:
            fail(f"{where}.category", "empty category")
        for name, value in (("center", o.center), ("extent", o.extent), ("rotation", o.rotation)):
            if not np.all(np.isfinite(value)):
                fail(f"{where}.{name}", "non-finite value")
        if o.center.shape != (3,) or o.extent.shape != (3,) or o.rotation.shape != (3, 3):
            fail(where, "center and extent must have 3 values, rotation 3x3")
        if np.any(o.extent <= 0):
            fail(f"{where}.extent", f"side lengths must be positive, got {o.extent.tolist()}")
        if not np.allclose(o.rotation.T @ o.rotation, np.eye(3), atol=1e-4):
            fail(f"{where}.rotation", "not orthonormal")
        if np.linalg.det(o.rotation) < 0:
            fail(f"{where}.rotation", "is a reflection (determinant -1), not a rotation")

    v = s.video
    if not v.uri:
        fail("video.uri", "empty")
    if not (math.isfinite(v.fps) and v.fps > 0):
        fail("video.fps", f"must be positive, got {v.fps}")
    if v.num_frames < 1 or v.width < 1 or v.height < 1:
        fail("video", f"num_frames, width and height must be >= 1, got {v.num_frames}, {v.width}, {v.height}")

    previous = -1
    for i, f in enumerate(s.frames):
        where = f"frames[{i}] (index {f.index})"
        if f.index <= previous:
            fail(f"{where}.index", f"frame indices must increase, {f.index} follows {previous}")
        if f.index >= v.num_frames:
            fail(f"{where}.index", f"beyond the video's {v.num_frames} frames")
        previous = f.index
        if not math.isfinite(f.timestamp):
            fail(f"{where}.timestamp", "non-finite value")
        if f.cam_to_world.shape != (4, 4) or not np.all(np.isfinite(f.cam_to_world)):
            fail(f"{where}.cam_to_world", "must be a finite 4x4 matrix")
        rot = f.cam_to_world[:3, :3]
        if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-3) or not np.allclose(
            f.cam_to_world[3], [0, 0, 0, 1]
        ):
            fail(
                f"{where}.cam_to_world",
                "not a rigid transform (rotation not orthonormal or last row not [0, 0, 0, 1])",
            )
        k = f.intrinsics
        if not all(math.isfinite(x) for x in (k.fx, k.fy, k.cx, k.cy)) or k.fx <= 0 or k.fy <= 0:
            fail(f"{where}.intrinsics", f"focal lengths must be positive and finite, got {k}")
        for vis in f.visible:
            if vis.instance_id not in seen_ids:
                fail(f"{where}.visible", f"unknown instance_id {vis.instance_id}")
            x0, y0, x1, y1 = vis.bbox_2d
            if not (x0 <= x1 and y0 <= y1) or not all(math.isfinite(c) for c in vis.bbox_2d):
                fail(
                    f"{where}.visible[{vis.instance_id}].bbox_2d",
                    f"must be finite [x0, y0, x1, y1] with x0<=x1, y0<=y1, got {vis.bbox_2d}",
                )
            if vis.pixels < 0:
                fail(f"{where}.visible[{vis.instance_id}].pixels", f"must be >= 0, got {vis.pixels}")


def scene_dir(root: str, dataset: str, scene_id: str) -> str:
    """URI of a scene's folder: ``<root>/scenes/<dataset>/<scene_id>``."""
    return storage.join(root, "scenes", dataset, scene_id)


def read_scene(uri: str) -> Scene:
    """Reads ``scene.json`` from a scene folder URI (or the file URI itself) and validates it."""
    path = uri if uri.endswith(".json") else storage.join(uri, SCENE_FILE)
    d = storage.read_json(path)
    if not isinstance(d, dict):
        raise SceneValidationError(path, "<root>", f"expected a JSON object, got {type(d).__name__}")
    return Scene.from_dict(d)


def write_scene(scene: Scene, root: str) -> str:
    """Writes ``scene.json`` under ``<root>/scenes/<dataset>/<scene_id>/``; returns the folder URI."""
    folder = scene_dir(root, scene.dataset, scene.scene_id)
    storage.write_json(storage.join(folder, SCENE_FILE), scene.to_dict())
    return folder


def video_id(dataset: str, scene_id: str) -> str:
    """The key that joins a scene's questions, token row and predictions: ``"<dataset>/<scene_id>"``."""
    return f"{dataset}/{scene_id}"


@dataclass(frozen=True)
class SceneRef:
    """A scene folder found by :func:`list_scenes` and the version of its ``scene.json`` (S3 ETag,
    else size and mtime: a scene rewritten in place gets a new version)."""

    dir: str
    version: str

    @property
    def video_id(self) -> str:
        """``"<dataset>/<scene_id>"`` from the folder names ``.../<dataset>/<scene_id>``."""
        dataset, scene_id = self.dir.rstrip("/").split("/")[-2:]
        return video_id(dataset, scene_id)


def list_scenes(uri: str) -> list[SceneRef]:
    """Every folder holding a ``scene.json`` anywhere under ``uri`` (a data root, its ``scenes/``,
    one dataset's folder), sorted, with versions; one listing, however many scenes."""
    suffix = "/" + SCENE_FILE
    return [SceneRef(u[: -len(suffix)], version) for u, version in storage.list_file_versions(uri, suffix).items()]


def verify_video(scene: Scene, scene_dir: str) -> str:
    """The scene's video URI, after checking the video's container against ``scene.json``.

    Reads only the container header (:func:`vlm3r_core.video.probe_video`), so it is cheap enough
    for every job that uses a scene.

    Raises:
        SceneValidationError: the video's frame count or frame size differs from ``scene.json``
            (e.g. a truncated ``video.mp4``: questions would name frames it does not have).
        VideoDecodeError: the video is missing or is not a video.
    """
    uri = scene.video_uri(scene_dir)
    probe = probe_video(uri)
    problems = []
    if probe.num_frames != scene.video.num_frames:
        problems.append(f"{probe.num_frames} frames, scene.json says {scene.video.num_frames}")
    if (probe.width, probe.height) != (scene.video.width, scene.video.height):
        problems.append(f"{probe.width}x{probe.height} pixels, scene.json says {scene.video.width}x{scene.video.height}")
    if problems:
        raise SceneValidationError(scene.scene_id, "video", f"{uri} has " + " and ".join(problems))
    return uri
