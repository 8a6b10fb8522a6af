"""Point clouds with camera poses: the input of the demo page's 3D viewer, as one JSON document.

JSON form (``PointCloud.to_json``; what ``serve_apps/static/viewer.js`` draws)::

    {"points":  [[x, y, z], ...],        world metres, Z up
     "colors":  [[r, g, b], ...],        0-255, one per point
     "cameras": [[[4x4]], ...],          camera-to-world poses (OpenCV axes), in video order
     "source":  "..."}                   what the cloud is (shown under the viewer)

Any producer can fill it: :func:`scene_point_cloud` samples the annotated layout of a scene (its
object boxes and floor, and the cameras at the sampled frames); :func:`reconstruction_point_cloud`
turns a reconstruction (CUT3R's point maps and poses) into the same fields. Legend: ``N`` points, ``K`` cameras.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vlm3r_core.scene import Scene
from vlm3r_core.video import sample_frame_indices

if TYPE_CHECKING:
    from vlm3r_core.geometry.reconstruction import Reconstruction

FLOOR_COLOUR = (150, 150, 150)


@dataclass(frozen=True)
class PointCloud:
    """Points with colours and a camera trajectory, in world metres (Z up).

    Attributes:
        points: (N, 3) float32 world coordinates.
        colors: (N, 3) uint8 RGB.
        cameras: (K, 4, 4) float64 camera-to-world poses (OpenCV axes), in video order.
        source: what the points are, e.g. "annotated layout of synthetic/syn-000003".
    """

    points: np.ndarray
    colors: np.ndarray
    cameras: np.ndarray
    source: str = ""

    def __post_init__(self):
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            raise ValueError(f"points must be (N, 3), got {self.points.shape}")
        if self.colors.shape != self.points.shape:
            raise ValueError(f"colors must be (N, 3) like points {self.points.shape}, got {self.colors.shape}")
        if self.cameras.ndim != 3 or self.cameras.shape[1:] != (4, 4):
            raise ValueError(f"cameras must be (K, 4, 4), got {self.cameras.shape}")
        if not (np.isfinite(self.points).all() and np.isfinite(self.cameras).all()):
            raise ValueError("points and cameras must be finite")

    def to_json(self, decimals: int = 3) -> dict[str, Any]:
        """The JSON form (coordinates rounded to ``decimals``, millimetres by default)."""
        return {
            "points": np.round(self.points.astype(np.float64), decimals).tolist(),
            "colors": self.colors.astype(int).tolist(),
            "cameras": np.round(self.cameras, 6).tolist(),
            "source": self.source,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PointCloud:
        """Parses the JSON form; ``ValueError`` names the field that is wrong."""
        arrays = {}
        for name, dtype, shape in (("points", np.float32, (-1, 3)), ("colors", np.int64, (-1, 3)), ("cameras", np.float64, (-1, 4, 4))):
            try:
                value = np.asarray(data.get(name, []), dtype=dtype)
                arrays[name] = value.reshape(shape) if value.size else np.zeros((0, *shape[1:]), dtype)
            except (TypeError, ValueError) as e:
                raise ValueError(f"{name}: expected a list of {list(shape[1:])} arrays ({e})") from None
        if ((arrays["colors"] < 0) | (arrays["colors"] > 255)).any():
            raise ValueError("colors: values must be in 0-255")
        return cls(arrays["points"], arrays["colors"].astype(np.uint8), arrays["cameras"], str(data.get("source", "")))


# Twelve distinct colours (no grey: the floor is grey); a category keeps its colour in every scene.
PALETTE = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (188, 189, 34), (23, 190, 207), (174, 199, 232), (255, 187, 120), (152, 223, 138),
)


def category_colour(category: str) -> tuple[int, int, int]:
    """A stable colour per category name (the same in every scene and run)."""
    return PALETTE[int.from_bytes(hashlib.blake2b(category.encode(), digest_size=4).digest(), "little") % len(PALETTE)]


def _box_surface_points(center, extent, rotation, count: int, rng: np.random.Generator) -> np.ndarray:
    """(count, 3) points uniformly on the surface of an oriented box."""
    half = extent / 2
    # Faces as (axis, sign); face area = product of the other two extents.
    faces = [(axis, sign) for axis in range(3) for sign in (-1.0, 1.0)]
    areas = np.array([np.prod(np.delete(extent, axis)) for axis, _ in faces])
    face = rng.choice(len(faces), size=count, p=areas / areas.sum())
    local = rng.uniform(-1.0, 1.0, size=(count, 3)) * half  # (count, 3) inside the box
    for f, (axis, sign) in enumerate(faces):
        local[face == f, axis] = sign * half[axis]
    return center + local @ rotation.T


def _inside_polygon(xy: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """(M,) bool: even-odd rule for points (M, 2) against a closed polygon (V, 2)."""
    x, y = xy[:, 0:1], xy[:, 1:2]  # (M, 1)
    x0, y0 = polygon[:, 0], polygon[:, 1]  # (V,)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0 > y) != (y1 > y)  # (M, V)
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
    return (crosses & (x < x_at)).sum(axis=1) % 2 == 1


def scene_point_cloud(scene: Scene, num_points: int = 15_000, num_cameras: int = 32, seed: int = 0) -> PointCloud:
    """The annotated layout of a scene as a point cloud (ground truth, not a reconstruction).

    Points lie on the surfaces of the object boxes (coloured per category, split among objects by
    surface area) and on the floor polygon (grey, a fifth of the points); the cameras are the poses
    of the ``num_cameras`` frames chosen by the one frame sampler.
    """
    rng = np.random.default_rng(seed)
    objects = list(scene.objects)
    floor_count = num_points // 5 if len(scene.room.floor_polygon) >= 3 else 0
    areas = np.array([2 * (e[0] * e[1] + e[1] * e[2] + e[0] * e[2]) for e in (o.extent for o in objects)])
    counts = (
        np.floor((num_points - floor_count) * areas / areas.sum()).astype(int) if objects else np.zeros(0, int)
    )
    points, colours = [], []
    for obj, count in zip(objects, counts, strict=True):
        if count > 0:
            points.append(_box_surface_points(obj.center, obj.extent, obj.rotation, int(count), rng))
            colours.append(np.tile(category_colour(obj.category), (int(count), 1)))
    if floor_count:
        polygon = scene.room.floor_polygon
        lo, hi = polygon.min(axis=0), polygon.max(axis=0)
        xy = rng.uniform(lo, hi, size=(4 * floor_count, 2))
        xy = xy[_inside_polygon(xy, polygon)][:floor_count]
        points.append(np.column_stack([xy, np.full(len(xy), scene.room.floor_z)]))
        colours.append(np.tile(FLOOR_COLOUR, (len(xy), 1)))
    frames = scene.frames
    cameras = (
        np.stack([frames[i].cam_to_world for i in np.unique(sample_frame_indices(len(frames), num_cameras))])
        if frames
        else np.zeros((0, 4, 4))
    )
    return PointCloud(
        points=np.concatenate(points).astype(np.float32) if points else np.zeros((0, 3), np.float32),
        colors=np.concatenate(colours).astype(np.uint8) if colours else np.zeros((0, 3), np.uint8),
        cameras=cameras,
        source=f"annotated layout of {scene.dataset}/{scene.scene_id} (scene.json: object boxes, floor, cameras)",
    )


# CUT3R's world (the first camera: x right, y down, z forward) -> a Z-up world: (x, y, z) -> (x, z, -y).
CUT3R_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


def reconstruction_point_cloud(reconstruction: Reconstruction, source: str = "") -> PointCloud:
    """A CUT3R reconstruction (``vlm3r_core.geometry.reconstruction``) in the viewer's form.

    CUT3R's world is the first camera's frame, y down; the points and camera poses are rotated
    into a Z-up frame (the first camera looks along +y, its up is +z), so the viewer shows the
    room upright. Distances are unchanged (metres).
    """
    rotation = np.eye(4)
    rotation[:3, :3] = CUT3R_TO_Z_UP
    points = reconstruction.cloud.points.astype(np.float64) @ CUT3R_TO_Z_UP.T  # (N, 3)
    cameras = rotation @ reconstruction.trajectory.cam_to_world  # (K, 4, 4)
    return PointCloud(points.astype(np.float32), reconstruction.cloud.colors, cameras, source)
