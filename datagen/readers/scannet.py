"""ScanNet v2 reader: one scan folder ``scans/<scene_id>/`` into the scene contract.

Files read (all inside the scan folder):

- ``<scene_id>.txt``: ``key = value`` lines; ``axisAlignment`` = 16 numbers, row-major 4x4, that
  map the raw scan frame to the axis-aligned, Z-up frame. Some scans (the test set) have none; the
  scene then stays in the raw frame and ``extra["source"]["axis_aligned"]`` is false.
- ``<scene_id>_vh_clean_2.ply``: the annotation mesh (raw frame).
- ``<scene_id>_vh_clean_2.0.010000.segs.json``: ``segIndices``, a segment id per mesh vertex.
- ``<scene_id>.aggregation.json`` (or ``<scene_id>_vh_clean.aggregation.json``): ``segGroups``, one
  per instance, ``{objectId|id, label, segments}``.
- SensReader export: ``color/<i>.jpg``, ``pose/<i>.txt`` (4x4 camera-to-world, raw frame; some are
  ``-inf``), ``intrinsic/intrinsic_color.txt`` (4x4, colour camera). ``<i>`` is the sensor frame
  number (30 Hz); an export with ``--frame_skip k`` has every k-th number.

The axis alignment ``A`` is applied to the mesh (``v' = A v``), hence to the boxes fitted to its
instance vertices, and to every pose (``T' = A T``). ScanNet has no annotated boxes: each
instance gets the gravity-aligned minimal box of its vertices. Wall/floor/ceiling groups are room
structure, not objects. Visibility: the aligned mesh is ray-cast per frame with per-vertex instance
labels.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from datagen.readers.common import (
    STRUCTURE_LABELS,
    ReadResult,
    SourceFormatError,
    SourceFrame,
    VisibilityRenderer,
    as_array,
    box_from_points,
    build_result,
    image_size,
    list_numbered_files,
    logger,
    read_json_object,
    read_matrix_txt,
    read_ply_mesh,
    require,
    room_from_mesh,
    triangle_labels_from_vertices,
)
from datagen.scene import Intrinsics, SceneObject
from vlm3r_core import storage

DATASET = "scannet"
SENSOR_FPS = 30.0  # ScanNet's colour stream rate; exported frame numbers count at this rate
DROP_NO_POSE_FILE = "no pose file"


def read_axis_alignment(uri: str) -> np.ndarray | None:
    """The 4x4 ``axisAlignment`` of a ``<scene_id>.txt`` file, or None when the file has none."""
    for n, line in enumerate(storage.read_text(uri).splitlines(), start=1):
        key, sep, value = line.partition("=")
        if not sep or key.strip() != "axisAlignment":
            continue
        try:
            values = [float(x) for x in value.split()]
        except ValueError as e:
            raise SourceFormatError(uri, f"line {n}: axisAlignment is not numeric ({e})") from e
        if len(values) != 16:
            raise SourceFormatError(uri, f"line {n}: axisAlignment needs 16 numbers, got {len(values)}")
        matrix = np.asarray(values).reshape(4, 4)
        if not np.all(np.isfinite(matrix)) or not np.allclose(matrix[3], [0, 0, 0, 1]):
            raise SourceFormatError(uri, f"line {n}: axisAlignment is not a finite rigid 4x4 transform")
        return matrix
    return None


def _read_aggregation(scan: str, scene_id: str) -> tuple[str, list]:
    for name in (f"{scene_id}.aggregation.json", f"{scene_id}_vh_clean.aggregation.json"):
        uri = storage.join(scan, name)
        if storage.exists(uri):
            groups = require(read_json_object(uri), "segGroups", uri)
            if not isinstance(groups, list):
                raise SourceFormatError(uri, f"segGroups must be a list, got {type(groups).__name__}")
            return uri, groups
    raise FileNotFoundError(f"{storage.join(scan, scene_id + '.aggregation.json')}: no such file")


def read_instances(
    agg_uri: str, groups: list, seg_indices: np.ndarray, vertices: np.ndarray
) -> tuple[list[SceneObject], np.ndarray, int]:
    """Objects (boxes fitted to their aligned vertices), per-vertex instance labels, skipped count."""
    vertex_labels = np.full(len(vertices), -1, dtype=np.int64)
    objects, skipped = [], 0
    for i, group in enumerate(groups):
        where = f"segGroups[{i}]."
        label = str(require(group, "label", agg_uri, where)).strip()
        instance_id = group.get("objectId", group.get("id")) if isinstance(group, dict) else None
        if not isinstance(instance_id, int):
            raise SourceFormatError(agg_uri, f"{where}objectId/id missing or not an integer")
        segments = as_array(require(group, "segments", agg_uri, where), (-1,), agg_uri, f"{where}segments")
        members = np.isin(seg_indices, segments.astype(np.int64))
        if label.lower() in STRUCTURE_LABELS:
            continue
        if not members.any():
            logger.warning("%s: instance %d (%s) has no mesh vertices; skipped", agg_uri, instance_id, label)
            skipped += 1
            continue
        vertex_labels[members] = instance_id
        center, extent, rotation = box_from_points(vertices[members])
        objects.append(SceneObject(instance_id, label, center, extent, rotation))
    return objects, vertex_labels, skipped


def read_scene(source_dir: str, scene_id: str, split: str, frame_stride: int = 1) -> ReadResult:
    """Reads one ScanNet scan folder (see the module docstring for the files)."""
    scan = source_dir.rstrip("/")
    info_uri = storage.join(scan, f"{scene_id}.txt")
    alignment = read_axis_alignment(info_uri)
    align = np.eye(4) if alignment is None else alignment
    if alignment is None:
        logger.warning("%s: no axisAlignment; the scene stays in the raw scan frame", info_uri)

    mesh = read_ply_mesh(storage.join(scan, f"{scene_id}_vh_clean_2.ply")).transformed(align)
    segs_uri = storage.join(scan, f"{scene_id}_vh_clean_2.0.010000.segs.json")
    seg_indices = as_array(
        require(read_json_object(segs_uri), "segIndices", segs_uri), (-1,), segs_uri, "segIndices"
    )
    if len(seg_indices) != len(mesh.vertices):
        raise SourceFormatError(
            segs_uri, f"{len(seg_indices)} segIndices for a mesh of {len(mesh.vertices)} vertices"
        )
    agg_uri, groups = _read_aggregation(scan, scene_id)
    objects, vertex_labels, skipped = read_instances(
        agg_uri, groups, seg_indices.astype(np.int64), mesh.vertices
    )

    colors = list_numbered_files(storage.join(scan, "color"), ".jpg")
    if not colors:
        raise SourceFormatError(
            storage.join(scan, "color"), "no exported colour frames (<i>.jpg); run SensReader first"
        )
    k = read_matrix_txt(storage.join(scan, "intrinsic", "intrinsic_color.txt"))
    intrinsics = Intrinsics(fx=float(k[0, 0]), fy=float(k[1, 1]), cx=float(k[0, 2]), cy=float(k[1, 2]))
    numbers = list(colors)[::frame_stride]
    poses = list_numbered_files(storage.join(scan, "pose"), ".txt")
    drops: Counter = Counter()
    candidates = []
    for number in numbers:
        if number not in poses:
            drops[DROP_NO_POSE_FILE] += 1
            continue
        raw = read_matrix_txt(poses[number])
        cam_to_world = align @ raw if np.all(np.isfinite(raw)) else raw  # non-finite: dropped below
        candidates.append(SourceFrame(str(number), cam_to_world, intrinsics, colors[number]))
    width, height = image_size(colors[numbers[0]])
    return build_result(
        scene_id=scene_id,
        dataset=DATASET,
        split=split,
        source_uri=scan,
        room=room_from_mesh(mesh, storage.join(scan, f"{scene_id}_vh_clean_2.ply")),
        objects=objects,
        objects_skipped=skipped,
        candidates=candidates,
        renderer=VisibilityRenderer(mesh, triangle_labels_from_vertices(mesh.triangles, vertex_labels)),
        image_width=width,
        image_height=height,
        fps=max(1, round(SENSOR_FPS / float(np.median(np.diff(numbers))))) if len(numbers) > 1 else 1,
        drop_reasons=drops,
        extra={"axis_aligned": alignment is not None, "axis_alignment": align.tolist()},
    )
