"""ScanNet v2 reader: one scan folder ``scans/<scene_id>/`` into the scene contract.

Files read (all inside the scan folder):

- ``<scene_id>.txt``: ``key = value`` lines; ``axisAlignment`` = 16 numbers, row-major 4x4, that
  map the raw scan frame to the axis-aligned, Z-up frame. Some scans (the test set) have none; the
  scene then stays in the raw frame and ``extra["source"]["axis_aligned"]`` is false.
- ``<scene_id>_vh_clean_2.ply``: the annotation mesh (raw frame).
- ``<scene_id>_vh_clean_2.0.010000.segs.json``: ``segIndices``, a segment id per mesh vertex.
- ``<scene_id>.aggregation.json`` (or ``<scene_id>_vh_clean.aggregation.json``): ``segGroups``, one
  per instance, ``{id, objectId, label, segments}``.
- SensReader export: ``color/<i>.jpg``, ``pose/<i>.txt`` (4x4 camera-to-world, raw frame; some are
  ``-inf``), ``intrinsic/intrinsic_color.txt`` (4x4, colour camera). ``<i>`` is the sensor frame
  number (30 Hz); an export with ``--frame_skip k`` has every k-th number.
- Optional, the filtered 2D instance masks: the extracted folder ``instance-filt/<i>.png`` or the
  release's ``<scene_id>_2d-instance-filt.zip`` (members ``instance-filt/<i>.png``), same frame
  numbers ``<i>``. Each is an 8-bit single-channel PNG; pixel value ``v > 0`` is the segGroup with
  ``id == v - 1`` (ScanNet's projection tool writes ``id + 1``), 0 is no instance.

The axis alignment ``A`` is applied to the mesh (``v' = A v``), hence to the boxes fitted to its
instance vertices, and to every pose (``T' = A T``). ScanNet has no annotated boxes: each
instance gets the gravity-aligned minimal box of its vertices. Wall/floor/ceiling groups are room
structure, not objects.

Visibility: a frame with an instance mask gets its ``visible`` list from the mask (values that are
not objects of the scene are ignored); masks may be at a lower resolution than the colour images
(a plain resize of the colour frame), so boxes and pixel counts are scaled to the video's pixels,
exactly as for ray-cast masks. Frames without a mask fall back to ray-casting the aligned mesh with
per-vertex instance labels (depth test included). ``extra["source"]["visibility"]`` counts both.
"""

from __future__ import annotations

import contextlib
import io
import re
import zipfile
import zlib
from collections import Counter

import numpy as np
from PIL import Image, UnidentifiedImageError

from datagen.readers.boxes import box_from_points, room_from_mesh
from datagen.readers.common import STRUCTURE_LABELS, ReadResult, SourceFormatError, logger
from datagen.readers.files import (
    as_array,
    image_size,
    list_numbered_files,
    read_json_object,
    read_matrix_txt,
    require,
)
from datagen.readers.frames import SourceFrame, build_result, even_size
from datagen.readers.instances import VisibilityRenderer, triangle_labels_from_vertices
from datagen.readers.ply import read_ply_mesh
from datagen.visibility import BACKGROUND, visibility_from_mask
from vlm3r_core import storage
from vlm3r_core.scene import Intrinsics, SceneObject

DATASET = "scannet"
SENSOR_FPS = 30.0  # ScanNet's colour stream rate; exported frame numbers count at this rate
DROP_NO_POSE_FILE = "no pose file"
MASK_FOLDER = "instance-filt"  # inside the zip; also where unzipping it into the scan folder puts it
MASK_ZIP = "{scene_id}_2d-instance-filt.zip"
MASK_ASPECT_TOLERANCE = 0.02  # a mask is a resize of the colour frame: 640x480 vs 1296x968 is 0.4 %
_MASK_MEMBER = re.compile(rf"^{MASK_FOLDER}/(\d+)\.png$")


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


def mask_value_lut(agg_uri: str, groups: list, object_ids: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """What each 8-bit instance-mask value means for this scene.

    Returns:
        lut: (256,) int64, the object's ``instance_id`` per mask value (value = segGroup ``id`` + 1);
            ``BACKGROUND`` for 0 and for groups that are not objects (structure, no geometry).
        known: (256,) bool, 0 and the values that name some segGroup (the rest match no annotation).
    """
    lut = np.full(256, BACKGROUND, dtype=np.int64)
    known = np.zeros(256, dtype=bool)
    known[0] = True
    for i, group in enumerate(groups):
        instance_id = group.get("objectId", group.get("id"))  # as read_instances names the object
        group_id = group.get("id", instance_id)
        if not isinstance(group_id, int):
            raise SourceFormatError(agg_uri, f"segGroups[{i}].id is not an integer")
        value = group_id + 1
        if 0 < value < 256:  # 8-bit masks cannot hold larger ids
            known[value] = True
            if instance_id in object_ids:
                lut[value] = instance_id
    return lut, known


class InstanceMasks:
    """The filtered 2D instance masks of one scan, if it has them (a context manager).

    Uses the extracted ``instance-filt/`` folder when it holds masks, else the release's
    ``<scene_id>_2d-instance-filt.zip`` (read in place, member by member). ``uri`` is the folder or
    the zip, None when the scan has neither; ``files`` maps frame number to file URI (folder) or
    member name (zip).
    """

    def __init__(self, scan: str, scene_id: str):
        self._stack = contextlib.ExitStack()
        self._archive: zipfile.ZipFile | None = None
        self.uri: str | None = None
        self.files: dict[int, str] = {}
        folder = storage.join(scan, MASK_FOLDER)
        zip_uri = storage.join(scan, MASK_ZIP.format(scene_id=scene_id))
        if files := list_numbered_files(folder, ".png"):
            self.uri, self.files = folder, files
        elif storage.exists(zip_uri):
            self.uri = zip_uri
            fs, path = storage.filesystem(zip_uri)
            try:
                self._archive = zipfile.ZipFile(self._stack.enter_context(fs.open(path, "rb")))
            except zipfile.BadZipFile as e:
                self._stack.close()
                raise SourceFormatError(zip_uri, f"not a valid zip archive ({e})") from e
            self._stack.callback(self._archive.close)
            for name in self._archive.namelist():
                if match := _MASK_MEMBER.match(name):
                    self.files[int(match.group(1))] = name

    def __enter__(self) -> InstanceMasks:
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def read(self, number: int, colour_size: tuple[int, int]) -> np.ndarray:
        """(h, w) uint8 mask of frame ``number``; raises :class:`SourceFormatError` (naming the
        file, for a zip ``<zip>/<member>``) for an undecodable PNG, a PNG that is not 8-bit
        single-channel, or one whose shape is not a resize of the ``colour_size`` (W, H) frames."""
        name = self.files[number]
        where = f"{self.uri}/{name}" if self._archive is not None else name
        try:
            data = self._archive.read(name) if self._archive is not None else storage.read_bytes(name)
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                mode, mask = img.mode, np.asarray(img)
        except (zipfile.BadZipFile, zlib.error) as e:
            raise SourceFormatError(where, f"corrupt zip member ({e})") from e
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            if isinstance(e, FileNotFoundError):
                raise
            raise SourceFormatError(where, f"cannot decode instance mask PNG ({e})") from e
        if mode != "L":
            raise SourceFormatError(where, f"expected an 8-bit single-channel PNG, got mode {mode!r}")
        (h, w), (width, height) = mask.shape, colour_size
        if abs((w / h) / (width / height) - 1) > MASK_ASPECT_TOLERANCE:
            raise SourceFormatError(
                where, f"mask is {w}x{h}, not a resize of the {width}x{height} colour frames"
            )
        return mask


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
    width, height = image_size(colors[numbers[0]])
    lut, known = mask_value_lut(agg_uri, groups, {obj.instance_id for obj in objects})
    values_seen = np.zeros(256, dtype=bool)
    drops: Counter = Counter()
    candidates = []
    with InstanceMasks(scan, scene_id) as masks:
        for number in numbers:
            if number not in poses:
                drops[DROP_NO_POSE_FILE] += 1
                continue
            raw = read_matrix_txt(poses[number])
            finite = bool(np.all(np.isfinite(raw)))
            cam_to_world = align @ raw if finite else raw  # non-finite: dropped by build_result
            visible = None  # None: ray-cast by build_result
            if finite and number in masks.files:
                mask = masks.read(number, (width, height))
                values_seen |= np.bincount(mask.ravel(), minlength=256) > 0
                visible = visibility_from_mask(lut[mask], size=even_size(width, height))
            candidates.append(SourceFrame(str(number), cam_to_world, intrinsics, colors[number], visible))
    unknown = np.flatnonzero(values_seen & ~known)
    if len(unknown):
        logger.warning(
            "%s: mask values %s name no segGroup of %s; ignored", masks.uri, unknown.tolist(), agg_uri
        )
    result = build_result(
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
        extra={
            "axis_aligned": alignment is not None,
            "axis_alignment": align.tolist(),
            "instance_masks": masks.uri,
        },
    )
    counts = result.scene.extra["source"]["visibility"]
    logger.info(
        "%s/%s: visibility of %d frames from instance masks (%s), %d ray-cast",
        DATASET, scene_id, counts["instance_masks"], masks.uri or "none", counts["ray_cast"],
    )  # fmt: skip
    return result
