"""ScanNet++ reader (iPhone stream): one ``data/<scene_id>/`` folder into the scene contract.

Files read:

- ``scans/mesh_aligned_0.05.ply``: laser-scan mesh, already aligned (Z up, metres).
- ``scans/segments.json``: ``segIndices``, a segment id per mesh vertex.
- ``scans/segments_anno.json``: ``segGroups`` ``{objectId|id, label, segments, obb: {centroid,
  axesLengths, normalizedAxes}}``; the rows of ``normalizedAxes`` are the box axes.
- ``iphone/pose_intrinsic_imu.json``: per frame key ``frame_%06d``: ``aligned_pose`` (4x4
  camera-to-world in the mesh frame, OpenCV camera axes, as the toolkit's back-projection uses it),
  ``intrinsic`` (3x3, full iPhone resolution), ``timestamp`` (s). The raw ARKit ``pose`` does not
  match the mesh and is not used.
- Frames: ``iphone/rgb/frame_%06d.jpg`` when extracted (the toolkit's ``prepare_iphone_data``),
  otherwise the video ``iphone/rgb.mp4`` or ``iphone/rgb.mkv`` (frame n = key ``frame_%06n``).

Boxes are the annotated OBBs (rotation kept as annotated); wall/floor/ceiling groups are room
structure, not objects. Visibility: the mesh is ray-cast per frame with per-vertex instance labels.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from datagen.readers.boxes import box_from_obb, room_from_mesh
from datagen.readers.common import STRUCTURE_LABELS, ReadResult, SourceFormatError, logger
from datagen.readers.files import as_array, image_size, list_numbered_files, read_json_object, require
from datagen.readers.frames import SourceFrame, build_result, video_fps, video_size
from datagen.readers.instances import VisibilityRenderer, triangle_labels_from_vertices
from datagen.readers.ply import read_ply_mesh
from vlm3r_core import storage
from vlm3r_core.scene import Intrinsics, SceneObject

DATASET = "scannetpp"
DROP_NO_POSE_ENTRY = "no pose entry"
VIDEO_NAMES = ("rgb.mp4", "rgb.mkv")
IPHONE_FPS = 60.0  # capture rate, used when a frame has no timestamp


def read_instances(
    anno_uri: str, groups: list, seg_indices: np.ndarray
) -> tuple[list[SceneObject], np.ndarray, int]:
    """Objects from the annotated OBBs, per-vertex instance labels, and the count of skipped groups."""
    vertex_labels = np.full(len(seg_indices), -1, dtype=np.int64)
    objects, skipped = [], 0
    for i, group in enumerate(groups):
        where = f"segGroups[{i}]."
        label = str(require(group, "label", anno_uri, where)).strip()
        instance_id = group.get("objectId", group.get("id"))
        if not isinstance(instance_id, int):
            raise SourceFormatError(anno_uri, f"{where}objectId/id missing or not an integer")
        if label.lower() in STRUCTURE_LABELS:
            continue
        segments = as_array(require(group, "segments", anno_uri, where), (-1,), anno_uri, f"{where}segments")
        obb = require(group, "obb", anno_uri, where)
        try:
            center, extent, rotation = box_from_obb(obb, anno_uri, f"{where}obb")
        except SourceFormatError as e:
            logger.warning("instance %d (%s) skipped: %s", instance_id, label, e)
            skipped += 1
            continue
        vertex_labels[np.isin(seg_indices, segments.astype(np.int64))] = instance_id
        objects.append(SceneObject(instance_id, label, center, extent, rotation))
    return objects, vertex_labels, skipped


def _frame_number(key: str, uri: str) -> int:
    digits = key[len(key.rstrip("0123456789")) :]
    if not key.startswith("frame_") or not digits:
        raise SourceFormatError(uri, f"frame key {key!r} is not frame_<number>")
    return int(digits)


def read_scene(source_dir: str, scene_id: str, split: str, frame_stride: int = 1) -> ReadResult:
    """Reads one ScanNet++ scene folder (see the module docstring for the files)."""
    root = source_dir.rstrip("/")
    mesh_uri = storage.join(root, "scans", "mesh_aligned_0.05.ply")
    mesh = read_ply_mesh(mesh_uri)
    segs_uri = storage.join(root, "scans", "segments.json")
    seg_indices = as_array(
        require(read_json_object(segs_uri), "segIndices", segs_uri), (-1,), segs_uri, "segIndices"
    )
    if len(seg_indices) != len(mesh.vertices):
        raise SourceFormatError(
            segs_uri, f"{len(seg_indices)} segIndices for a mesh of {len(mesh.vertices)} vertices"
        )
    anno_uri = storage.join(root, "scans", "segments_anno.json")
    groups = require(read_json_object(anno_uri), "segGroups", anno_uri)
    if not isinstance(groups, list):
        raise SourceFormatError(anno_uri, f"segGroups must be a list, got {type(groups).__name__}")
    objects, vertex_labels, skipped = read_instances(anno_uri, groups, seg_indices.astype(np.int64))

    iphone = storage.join(root, "iphone")
    poses_uri = storage.join(iphone, "pose_intrinsic_imu.json")
    entries = {
        _frame_number(key, poses_uri): (key, value) for key, value in read_json_object(poses_uri).items()
    }
    images = list_numbered_files(storage.join(iphone, "rgb"), ".jpg")
    source_video = None
    if images:
        numbers = list(images)[::frame_stride]
        width, height = image_size(images[numbers[0]])
    else:
        source_video = next(
            (u for u in (storage.join(iphone, n) for n in VIDEO_NAMES) if storage.exists(u)), None
        )
        if source_video is None:
            raise FileNotFoundError(f"{iphone}: neither rgb/frame_%06d.jpg frames nor rgb.mp4/rgb.mkv")
        numbers = sorted(entries)[::frame_stride]
        width, height = video_size(source_video)

    drops: Counter = Counter()
    candidates, times = [], []
    for number in numbers:
        if number not in entries:
            drops[DROP_NO_POSE_ENTRY] += 1
            continue
        key, entry = entries[number]
        pose = as_array(
            require(entry, "aligned_pose", poses_uri, f"{key}."), (4, 4), poses_uri, f"{key}.aligned_pose"
        )
        k = as_array(require(entry, "intrinsic", poses_uri, f"{key}."), (3, 3), poses_uri, f"{key}.intrinsic")
        intrinsics = Intrinsics(fx=float(k[0, 0]), fy=float(k[1, 1]), cx=float(k[0, 2]), cy=float(k[1, 2]))
        candidates.append(SourceFrame(key, pose, intrinsics, images[number] if images else number))
        times.append(float(entry.get("timestamp", number / IPHONE_FPS)))
    return build_result(
        scene_id=scene_id,
        dataset=DATASET,
        split=split,
        source_uri=root,
        room=room_from_mesh(mesh, mesh_uri),
        objects=objects,
        objects_skipped=skipped,
        candidates=candidates,
        renderer=VisibilityRenderer(mesh, triangle_labels_from_vertices(mesh.triangles, vertex_labels)),
        image_width=width,
        image_height=height,
        fps=video_fps(times),
        drop_reasons=drops,
        source_video=source_video,
    )
