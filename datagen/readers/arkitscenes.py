"""ARKitScenes (3DOD release) reader: one ``3dod/<Training|Validation>/<video_id>/`` folder.

Files read:

- ``<video_id>_3dod_annotation.json``: ``data: [{uid, label, segments: {obbAligned: {centroid,
  axesLengths, normalizedAxes}}}]``; the rows of ``normalizedAxes`` are the box axes (yaw-only).
- ``<video_id>_3dod_mesh.ply``: ARKit mesh in the same world frame (gravity-aligned, Z up, metres).
- ``<video_id>_frames/lowres_wide.traj``: one line per pose ``timestamp rx ry rz tx ty tz``:
  axis-angle (radians) and translation (m) of the **world-to-camera** transform; inverted here to
  camera-to-world (camera axes x right, y down, z forward).
- ``<video_id>_frames/lowres_wide/<video_id>_<timestamp>.png``: RGB frames (256x192, ~10 fps).
- ``<video_id>_frames/lowres_wide_intrinsics/<video_id>_<timestamp>.pincam``: one line
  ``width height fx fy cx cy``.

Frames are matched to poses and intrinsics by timestamp as the official loader does: poses within
5 ms, intrinsics within 1.5 ms (file names round to 1 ms). Unmatched frames are dropped and counted.
Instance ids are the positions in ``data``; ``extra["source"]["instance_uids"]`` maps them to the
annotation uids. Visibility: the mesh is ray-cast per frame; a hit belongs to the smallest box
holding its triangle. Frames are not rotated upright (``sky_direction`` is not applied).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from scipy.spatial.transform import Rotation

from datagen.readers.common import (
    ReadResult,
    SourceFormatError,
    SourceFrame,
    VisibilityRenderer,
    box_from_obb,
    build_result,
    image_size,
    logger,
    read_json_object,
    read_ply_mesh,
    require,
    room_from_mesh,
    triangle_labels_from_boxes,
    video_fps,
)
from datagen.scene import Intrinsics, SceneObject
from vlm3r_core import storage

DATASET = "arkitscenes"
POSE_TOLERANCE_S = 0.005
INTRINSICS_TOLERANCE_S = 0.0015
DROP_NO_POSE = "no pose within 5 ms"
DROP_NO_INTRINSICS = "no intrinsics file"


def read_trajectory(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """Parses a ``.traj`` file.

    Returns:
        timestamps (P,) seconds, cam_to_world (P, 4, 4) = inverse of each line's world-to-camera.
    """
    times, poses = [], []
    for n, line in enumerate(storage.read_text(uri).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(x) for x in line.split()]
        except ValueError as e:
            raise SourceFormatError(uri, f"line {n}: not numeric ({e})") from e
        if len(values) != 7:
            raise SourceFormatError(
                uri, f"line {n}: expected 7 numbers (t rx ry rz tx ty tz), got {len(values)}"
            )
        rotation = Rotation.from_rotvec(values[1:4]).as_matrix()  # world -> camera
        translation = np.asarray(values[4:7])
        cam_to_world = np.eye(4)
        cam_to_world[:3, :3] = rotation.T
        cam_to_world[:3, 3] = -rotation.T @ translation
        times.append(values[0])
        poses.append(cam_to_world)
    if not times:
        raise SourceFormatError(uri, "no poses")
    order = np.argsort(times)
    return np.asarray(times)[order], np.stack(poses)[order]


def read_pincam(uri: str) -> tuple[int, int, Intrinsics]:
    """``(width, height, intrinsics)`` from a ``.pincam`` file (``w h fx fy cx cy``)."""
    try:
        w, h, fx, fy, cx, cy = (float(x) for x in storage.read_text(uri).split())
    except ValueError as e:
        raise SourceFormatError(uri, f"expected 6 numbers 'width height fx fy cx cy' ({e})") from e
    return int(w), int(h), Intrinsics(fx=fx, fy=fy, cx=cx, cy=cy)


def _timestamped_files(folder: str, video_id: str, suffix: str) -> tuple[np.ndarray, list[str]]:
    """Files ``<video_id>_<timestamp><suffix>`` in ``folder``, sorted by timestamp."""
    found = []
    for uri in storage.list_files(folder, suffix, recursive=False):
        stem = uri.rsplit("/", 1)[-1][: -len(suffix)]
        prefix, _, stamp = stem.rpartition("_")
        try:
            found.append((float(stamp), uri))
        except ValueError as e:
            raise SourceFormatError(uri, f"file name is not {video_id}_<timestamp>{suffix}") from e
    found.sort()
    return np.asarray([t for t, _ in found]), [u for _, u in found]


def _nearest(times: np.ndarray, t: float, tolerance: float) -> int | None:
    i = int(np.searchsorted(times, t))
    best = min((j for j in (i - 1, i) if 0 <= j < len(times)), key=lambda j: abs(times[j] - t), default=None)
    return best if best is not None and abs(times[best] - t) <= tolerance else None


def read_objects(anno_uri: str) -> tuple[list[SceneObject], dict[int, str], int]:
    """Objects from the annotation's oriented boxes, ``{instance_id: uid}``, and the skipped count."""
    data = require(read_json_object(anno_uri), "data", anno_uri)
    if not isinstance(data, list):
        raise SourceFormatError(anno_uri, f"'data' must be a list, got {type(data).__name__}")
    objects, uids, skipped = [], {}, 0
    for i, item in enumerate(data):
        where = f"data[{i}]."
        label = str(require(item, "label", anno_uri, where)).strip()
        obb = require(require(item, "segments", anno_uri, where), "obbAligned", anno_uri, f"{where}segments.")
        try:
            center, extent, rotation = box_from_obb(obb, anno_uri, f"{where}segments.obbAligned")
        except SourceFormatError as e:
            logger.warning("object %d (%s) skipped: %s", i, label, e)
            skipped += 1
            continue
        objects.append(SceneObject(i, label, center, extent, rotation))
        uids[i] = str(item.get("uid", ""))
    return objects, uids, skipped


def read_scene(source_dir: str, scene_id: str, split: str, frame_stride: int = 1) -> ReadResult:
    """Reads one ARKitScenes 3DOD video folder (see the module docstring for the files)."""
    root = source_dir.rstrip("/")
    objects, uids, skipped = read_objects(storage.join(root, f"{scene_id}_3dod_annotation.json"))
    mesh_uri = storage.join(root, f"{scene_id}_3dod_mesh.ply")
    mesh = read_ply_mesh(mesh_uri)

    frames_dir = storage.join(root, f"{scene_id}_frames")
    pose_times, cam_to_world = read_trajectory(storage.join(frames_dir, "lowres_wide.traj"))
    image_times, images = _timestamped_files(storage.join(frames_dir, "lowres_wide"), scene_id, ".png")
    if not images:
        raise SourceFormatError(
            storage.join(frames_dir, "lowres_wide"), "no frames (<video_id>_<timestamp>.png)"
        )
    intr_times, intr_files = _timestamped_files(
        storage.join(frames_dir, "lowres_wide_intrinsics"), scene_id, ".pincam"
    )

    drops: Counter = Counter()
    candidates, times = [], []
    for t, image in list(zip(image_times.tolist(), images, strict=True))[::frame_stride]:
        pose_i = _nearest(pose_times, t, POSE_TOLERANCE_S)
        intr_i = _nearest(intr_times, t, INTRINSICS_TOLERANCE_S)
        if pose_i is None:
            drops[DROP_NO_POSE] += 1
            continue
        if intr_i is None:
            drops[DROP_NO_INTRINSICS] += 1
            continue
        _, _, intrinsics = read_pincam(intr_files[intr_i])
        candidates.append(SourceFrame(f"{t:.3f}", cam_to_world[pose_i], intrinsics, image))
        times.append(t)
    width, height = image_size(images[0])
    return build_result(
        scene_id=scene_id,
        dataset=DATASET,
        split=split,
        source_uri=root,
        room=room_from_mesh(mesh, mesh_uri),
        objects=objects,
        objects_skipped=skipped,
        candidates=candidates,
        renderer=VisibilityRenderer(mesh, triangle_labels_from_boxes(mesh, objects)),
        image_width=width,
        image_height=height,
        fps=video_fps(times),
        drop_reasons=drops,
        extra={"instance_uids": {str(k): v for k, v in uids.items()}},
    )
