"""What the dataset readers share: file parsing with clear errors, meshes, boxes, room, visibility.

Every reader turns one source scene into a :class:`vlm3r_core.scene.Scene` plus the list of images (or
source-video frames) that become the scene's ``video.mp4``. The pieces here are dataset-agnostic:

- :func:`read_ply_mesh`: a small PLY reader (ascii and binary) for triangle meshes, so meshes can
  come from any storage URI and a truncated file names itself;
- :func:`box_from_points` (gravity-aligned minimal box of an instance's points) and
  :func:`box_from_obb` (an annotated oriented box, ``normalizedAxes`` rows = box axes);
- :func:`room_from_mesh`: floor height, ceiling height and floor polygon (the mesh footprint);
- :class:`VisibilityRenderer`: ray-casts the mesh per frame (depth test included) into an instance
  mask and turns it into the frame's ``visible`` list;
- :func:`assemble_frames`: drops frames with non-finite poses (and counts them), numbers the kept
  frames as video frames and attaches visibility.

Conventions: world metres, Z up; cameras OpenCV (x right, y down, z forward); ``cam_to_world`` 4x4.
Shapes: ``V`` mesh vertices, ``F`` triangles, ``N`` points, ``H`` x ``W`` image pixels.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import open3d as o3d
import shapely
import shapely.affinity
from PIL import Image, UnidentifiedImageError
from scipy import ndimage
from shapely.geometry.polygon import orient

from datagen.visibility import BACKGROUND, visibility_from_mask
from vlm3r_core import storage
from vlm3r_core.scene import Frame, Intrinsics, Room, Scene, SceneObject, VideoInfo, Visibility

logger = logging.getLogger("datagen.readers")

STRUCTURE_LABELS = frozenset({"wall", "walls", "floor", "ceiling"})  # room structure, not objects
MIN_EXTENT_M = 0.01  # boxes are at least 1 cm along every axis
FOOTPRINT_CELL_M = 0.1  # grid cell of the floor footprint
VISIBILITY_MAX_SIDE = 256  # instance masks are ray-cast at most this many pixels wide/high
DROP_NON_FINITE_POSE = "non-finite pose"
VIDEO_FILE = "video.mp4"  # the scene's video, beside scene.json


class SourceFormatError(ValueError):
    """A source file that is malformed or truncated; the message names the file and the reason."""

    def __init__(self, uri: str, reason: str):
        self.uri, self.reason = uri, reason
        super().__init__(f"{uri}: {reason}")


@dataclass(frozen=True)
class ReadResult:
    """One source scene read into the scene contract.

    Attributes:
        scene: the validated scene; ``video.uri`` is ``video.mp4`` beside ``scene.json``.
        frames_dropped: source frames left out (non-finite pose, no pose for the image, ...).
        drop_reasons: ``{reason: count}``, summing to ``frames_dropped``.
        frame_images: one image URI per scene frame, in video order (empty when the frames come
            from ``source_video``).
        source_video: a source video whose frames ``source_video_frames`` (0-based decode order)
            become the scene's video frames, in order.
        source_video_frames: see ``source_video``.
        objects_skipped: annotated instances left out (no geometry or an invalid box).
        quarter_turns: every source image is turned by ``np.rot90(image, quarter_turns)``
            (counter-clockwise quarter turns) before it becomes a video frame; the frames' cameras
            already describe the turned image (ARKitScenes frames turned upright).
    """

    scene: Scene
    frames_dropped: int
    drop_reasons: dict[str, int]
    frame_images: tuple[str, ...] = ()
    source_video: str | None = None
    source_video_frames: tuple[int, ...] = ()
    objects_skipped: int = 0
    quarter_turns: int = 0

    def __post_init__(self):
        if self.quarter_turns not in (0, 1, 2, 3):
            raise ValueError(
                f"scene {self.scene.scene_id!r}: quarter_turns must be 0..3, got {self.quarter_turns}"
            )
        n = len(self.scene.frames)
        sources = len(self.frame_images) if self.source_video is None else len(self.source_video_frames)
        if sources != n:
            raise ValueError(f"scene {self.scene.scene_id!r}: {sources} frame sources for {n} frames")
        if sum(self.drop_reasons.values()) != self.frames_dropped:
            raise ValueError(
                f"scene {self.scene.scene_id!r}: drop reasons {self.drop_reasons} != {self.frames_dropped}"
            )


# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------


def read_json_object(uri: str) -> dict[str, Any]:
    """Reads a JSON file that must hold an object; malformed JSON raises :class:`SourceFormatError`."""
    try:
        data = storage.read_json(uri)
    except ValueError as e:
        raise SourceFormatError(uri, f"invalid JSON ({e.__cause__ or e})") from e
    if not isinstance(data, dict):
        raise SourceFormatError(uri, f"expected a JSON object, got {type(data).__name__}")
    return data


def require(d: Any, key: str, uri: str, where: str = "") -> Any:
    """``d[key]`` or a :class:`SourceFormatError` naming the file and the missing key."""
    if not isinstance(d, dict) or key not in d:
        raise SourceFormatError(uri, f"missing key {where}{key!r}")
    return d[key]


def as_array(value: Any, shape: tuple[int, ...], uri: str, what: str) -> np.ndarray:
    """``value`` as a float64 array of ``shape`` (-1 = any), or a :class:`SourceFormatError`."""
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise SourceFormatError(uri, f"{what} is not numeric ({e})") from e
    if a.ndim != len(shape) or any(s not in (-1, n) for s, n in zip(shape, a.shape, strict=True)):
        raise SourceFormatError(uri, f"{what} must have shape {shape}, got {a.shape}")
    return a


def read_matrix_txt(uri: str, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """A whitespace-separated matrix text file (e.g. ScanNet ``pose/<i>.txt``); may hold ``-inf``."""
    text = storage.read_text(uri)
    try:
        values = [float(x) for x in text.split()]
    except ValueError as e:
        raise SourceFormatError(uri, f"not a numeric matrix ({e})") from e
    if len(values) != shape[0] * shape[1]:
        raise SourceFormatError(
            uri, f"expected {shape[0]}x{shape[1]} = {shape[0] * shape[1]} numbers, got {len(values)}"
        )
    return np.asarray(values, dtype=np.float64).reshape(shape)


def read_image(uri: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB image (JPEG, PNG, ...)."""
    try:
        with Image.open(io.BytesIO(storage.read_bytes(uri))) as img:
            return np.asarray(img.convert("RGB"))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise SourceFormatError(uri, f"cannot decode image ({e})") from e


def image_size(uri: str) -> tuple[int, int]:
    """``(width, height)`` of an image, read from its header."""
    try:
        with Image.open(io.BytesIO(storage.read_bytes(uri))) as img:
            return img.size
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise SourceFormatError(uri, f"cannot read image header ({e})") from e


def list_numbered_files(folder: str, suffix: str) -> dict[int, str]:
    """``{number: uri}`` for files named ``<digits...><number>.<suffix>`` directly in ``folder``."""
    out = {}
    for uri in storage.list_files(folder, suffix, recursive=False):
        stem = uri.rsplit("/", 1)[-1][: -len(suffix)]
        digits = stem[len(stem.rstrip("0123456789")) :]
        if digits:
            out[int(digits)] = uri
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------------------------
# Meshes
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mesh:
    vertices: np.ndarray  # (V, 3) float64, metres
    triangles: np.ndarray  # (F, 3) int64 vertex indices

    def transformed(self, transform: np.ndarray) -> Mesh:
        """The mesh with a 4x4 rigid transform applied to its vertices."""
        return Mesh(self.vertices @ transform[:3, :3].T + transform[:3, 3], self.triangles)


_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


@dataclass
class _PlyElement:
    name: str
    count: int
    props: list[tuple[str, str, str | None]] = field(default_factory=list)  # (name, type, list item type)


def _parse_ply_header(uri: str, data: bytes) -> tuple[str, list[_PlyElement], int]:
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise SourceFormatError(uri, "not a PLY file (no 'ply' magic or no 'end_header')")
    body = data.find(b"\n", end) + 1
    fmt, elements = None, []
    for line in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        parts = line.split()
        try:
            if not parts or parts[0] in ("comment", "obj_info"):
                continue
            if parts[0] == "format":
                fmt = parts[1]
            elif parts[0] == "element":
                elements.append(_PlyElement(parts[1], int(parts[2])))
            elif parts[0] == "property" and parts[1] == "list":
                elements[-1].props.append((parts[4], _PLY_TYPES[parts[2]], _PLY_TYPES[parts[3]]))
            elif parts[0] == "property":
                elements[-1].props.append((parts[2], _PLY_TYPES[parts[1]], None))
            else:
                raise ValueError("unknown keyword")
        except (IndexError, KeyError, ValueError) as e:
            raise SourceFormatError(uri, f"bad PLY header line {line!r} ({type(e).__name__}: {e})") from e
    if fmt not in ("ascii", "binary_little_endian", "binary_big_endian"):
        raise SourceFormatError(uri, f"unsupported PLY format {fmt!r}")
    return fmt, elements, body


def _read_binary_element(
    uri: str, data: bytes, offset: int, el: _PlyElement, endian: str
) -> tuple[np.ndarray, int]:
    """Parses one element; list properties must hold 3 items (triangles). Returns (array, new offset)."""
    fields: list[tuple] = []
    for name, kind, item in el.props:
        if item is None:
            fields.append((name, endian + kind))
        else:
            fields += [(name + "__count", endian + kind), (name, endian + item, (3,))]
    dtype = np.dtype(fields)
    need = el.count * dtype.itemsize
    if len(data) - offset < need:
        raise SourceFormatError(
            uri,
            f"truncated: element '{el.name}' needs {need} bytes ({el.count} rows), only {len(data) - offset} left",
        )
    rows = np.frombuffer(data, dtype=dtype, count=el.count, offset=offset)
    for name, _, item in el.props:
        if item is not None and el.count and np.any(rows[name + "__count"] != 3):
            bad = int(np.argmax(rows[name + "__count"] != 3))
            raise SourceFormatError(
                uri,
                f"{el.name} {bad} has {int(rows[name + '__count'][bad])} vertices; only triangle meshes are supported",
            )
    return rows, offset + need


def _read_ascii_elements(
    uri: str, text: str, elements: list[_PlyElement]
) -> dict[str, dict[str, np.ndarray]]:
    tokens, pos, out = text.split(), 0, {}
    for el in elements:
        columns: dict[str, list] = {name: [] for name, _, _ in el.props}
        for row in range(el.count):
            for name, _, item in el.props:
                try:
                    if item is None:
                        columns[name].append(float(tokens[pos]))
                        pos += 1
                    else:
                        n = int(tokens[pos])
                        if n != 3:
                            raise SourceFormatError(
                                uri, f"{el.name} {row} has {n} vertices; only triangle meshes are supported"
                            )
                        columns[name].append([int(t) for t in tokens[pos + 1 : pos + 1 + n]])
                        if len(columns[name][-1]) != n:
                            raise IndexError
                        pos += 1 + n
                except IndexError as e:
                    raise SourceFormatError(
                        uri, f"truncated: element '{el.name}' ends at row {row} of {el.count}"
                    ) from e
                except ValueError as e:
                    if isinstance(e, SourceFormatError):
                        raise
                    raise SourceFormatError(uri, f"element '{el.name}' row {row}: not a number ({e})") from e
        out[el.name] = {k: np.asarray(v) for k, v in columns.items()}
    return out


def read_ply_mesh(uri: str) -> Mesh:
    """Reads a triangle mesh (``vertex`` x/y/z, ``face`` vertex_indices) from a PLY file at ``uri``.

    Handles ascii and binary (little/big endian) PLY with any extra vertex properties (colours,
    normals, labels). Truncated or malformed files raise :class:`SourceFormatError`.
    """
    data = storage.read_bytes(uri)
    fmt, elements, body = _parse_ply_header(uri, data)
    names = [el.name for el in elements]
    if "vertex" not in names or "face" not in names:
        raise SourceFormatError(uri, f"PLY needs 'vertex' and 'face' elements, has {names}")
    if fmt == "ascii":
        wanted = elements[: max(names.index("vertex"), names.index("face")) + 1]
        parsed = _read_ascii_elements(uri, data[body:].decode("ascii", errors="replace"), wanted)
    else:
        endian, offset, parsed = "<" if fmt == "binary_little_endian" else ">", body, {}
        for el in elements:
            rows, offset = _read_binary_element(uri, data, offset, el, endian)
            parsed[el.name] = {name: rows[name] for name, _, _ in el.props}
            if "vertex" in parsed and "face" in parsed:
                break
    vertex, face = parsed["vertex"], parsed["face"]
    if not all(k in vertex for k in "xyz"):
        raise SourceFormatError(uri, f"vertex element lacks x/y/z (has {sorted(vertex)})")
    face_key = next((k for k in ("vertex_indices", "vertex_index") if k in face), None)
    if face_key is None:
        raise SourceFormatError(uri, f"face element lacks vertex_indices (has {sorted(face)})")
    vertices = np.stack([vertex[k] for k in "xyz"], axis=1).astype(np.float64)  # (V, 3)
    triangles = np.asarray(face[face_key], dtype=np.int64).reshape(-1, 3)  # (F, 3)
    if len(triangles) == 0:
        raise SourceFormatError(uri, "mesh has no faces")
    if triangles.min() < 0 or triangles.max() >= len(vertices):
        raise SourceFormatError(uri, f"face indices out of range [0, {len(vertices)})")
    if not np.all(np.isfinite(vertices)):
        raise SourceFormatError(uri, "non-finite vertex coordinates")
    return Mesh(vertices, triangles)


def surface_points(mesh: Mesh, spacing: float, max_points: int = 2_000_000, seed: int = 0) -> np.ndarray:
    """(N, 3) the mesh vertices plus points sampled uniformly on the triangles, about one per spacing^2."""
    tri = mesh.vertices[mesh.triangles]  # (F, 3, 3)
    areas = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)  # (F,)
    total = float(areas.sum())
    n = min(int(total / spacing**2), max_points)
    if n == 0 or total <= 0:
        return mesh.vertices
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(tri), size=n, p=areas / total)
    r1, r2 = rng.random(n), rng.random(n)
    flip = r1 + r2 > 1
    r1[flip], r2[flip] = 1 - r1[flip], 1 - r2[flip]
    t = tri[pick]
    samples = t[:, 0] + r1[:, None] * (t[:, 1] - t[:, 0]) + r2[:, None] * (t[:, 2] - t[:, 0])  # (n, 3)
    return np.concatenate([mesh.vertices, samples])


# ----------------------------------------------------------------------------------------------
# Boxes and room
# ----------------------------------------------------------------------------------------------


def _yaw_rotation(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def box_from_points(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gravity-aligned oriented box of minimal footprint area around (N, 3) points.

    The box axes are (u, v, z) with u, v horizontal; u is chosen within +-45 degrees of world x, so
    an axis-aligned object gets the identity rotation.

    Returns:
        center (3,), extent (3,) full side lengths (at least ``MIN_EXTENT_M``), rotation (3, 3)
        whose columns are the box axes.
    """
    hull = shapely.MultiPoint(points[:, :2]).convex_hull
    coords = np.asarray(hull.exterior.coords if hull.geom_type == "Polygon" else hull.coords)  # (K, 2)
    edges = np.diff(coords, axis=0)
    angles = [0.0] + [math.atan2(e[1], e[0]) for e in edges if np.hypot(*e) > 1e-9]
    best = None
    for theta in angles:
        theta = theta - (math.pi / 2) * round(theta / (math.pi / 2))  # same rectangle, u within +-45 deg
        rot = _yaw_rotation(theta)[:2, :2]
        local = coords @ rot  # (K, 2) coordinates along u, v
        lo, hi = local.min(0), local.max(0)
        area = float(np.prod(hi - lo))
        if best is None or area < best[0] - 1e-12:
            best = (area, theta, lo, hi)
    _, theta, lo, hi = best
    rotation = _yaw_rotation(theta)
    z_lo, z_hi = float(points[:, 2].min()), float(points[:, 2].max())
    center_uv = (lo + hi) / 2
    center = np.array([*(rotation[:2, :2] @ center_uv), (z_lo + z_hi) / 2])
    extent = np.maximum(np.array([*(hi - lo), z_hi - z_lo]), MIN_EXTENT_M)
    return center, extent, rotation


def box_from_obb(obb: Any, uri: str, what: str):
    """An annotated oriented box (ScanNet++ / ARKitScenes ``obb``: ``{centroid, axesLengths,
    normalizedAxes}``, ``what`` names it in errors) in the contract's form.

    ``normalizedAxes`` is 9 numbers whose rows (3 at a time) are the box axes, so the rotation with
    axes as columns is ``reshape(3, 3).T``. The matrix is snapped to the nearest rotation (a
    left-handed axis triple gets its third axis flipped, which describes the same box).

    Returns:
        center (3,), extent (3,), rotation (3, 3); raises :class:`SourceFormatError` for a box that
        is not numeric, not finite, has a non-positive side or axes far from orthonormal.
    """
    center = as_array(require(obb, "centroid", uri, f"{what}."), (3,), uri, f"{what}.centroid")
    extent = as_array(require(obb, "axesLengths", uri, f"{what}."), (3,), uri, f"{what}.axesLengths")
    axes = as_array(require(obb, "normalizedAxes", uri, f"{what}."), (9,), uri, f"{what}.normalizedAxes")
    rotation = axes.reshape(3, 3).T
    if not (np.all(np.isfinite(center)) and np.all(np.isfinite(extent)) and np.all(np.isfinite(rotation))):
        raise SourceFormatError(uri, f"{what}: non-finite box values")
    if np.any(extent <= 0):
        raise SourceFormatError(uri, f"{what}: axesLengths must be positive, got {extent.tolist()}")
    if not np.allclose(rotation.T @ rotation, np.eye(3), atol=1e-2):
        raise SourceFormatError(uri, f"{what}: normalizedAxes are not orthonormal")
    u, _, vt = np.linalg.svd(rotation)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        rotation[:, 2] *= -1
    return center, np.maximum(extent, MIN_EXTENT_M), rotation


def footprint_polygon(
    xy: np.ndarray, cell: float = FOOTPRINT_CELL_M, close_cells: int = 2
) -> shapely.Polygon:
    """The largest connected region covered by (N, 2) points, as a polygon.

    Points are binned into ``cell``-sized squares; gaps up to ``2 * close_cells`` cells are closed
    and holes filled; the outline runs through the centres of the border cells (cells are centred on
    multiples of ``cell`` from the lowest point), so a densely sampled rectangle comes back at its
    true size and place.
    """
    origin = xy.min(0)
    ij = np.rint((xy - origin) / cell).astype(np.int64)  # (N, 2) cell i is centred at origin + i * cell
    pad = close_cells + 1
    grid = np.zeros(ij.max(0) + 1 + 2 * pad, dtype=bool)
    grid[ij[:, 0] + pad, ij[:, 1] + pad] = True
    grid = ndimage.binary_closing(grid, structure=np.ones((3, 3), bool), iterations=close_cells)
    grid = ndimage.binary_fill_holes(grid)
    labels, n = ndimage.label(grid)
    if n > 1:
        grid = labels == (1 + int(np.argmax(ndimage.sum(grid, labels, range(1, n + 1)))))
    cells = np.argwhere(grid) - pad  # (C, 2) integer cell coordinates: the union below is exact
    squares = shapely.box(cells[:, 0], cells[:, 1], cells[:, 0] + 1, cells[:, 1] + 1)
    shape = shapely.unary_union(squares).buffer(-0.5, join_style="mitre")
    if shape.geom_type == "MultiPolygon":
        shape = max(shape.geoms, key=lambda g: g.area)
    outline = orient(shapely.Polygon(shape.exterior).simplify(0.5))  # counter-clockwise
    shift = origin - cell / 2  # square [i, i + 1] is cell i, centred at origin + i * cell
    return shapely.affinity.affine_transform(
        outline, [cell, 0.0, 0.0, cell, float(shift[0]), float(shift[1])]
    )


def room_from_mesh(mesh: Mesh, name: str) -> Room:
    """Floor height (1st percentile of surface z), height (99th percentile minus floor) and the
    floor polygon (footprint of the mesh surface between floor and ceiling) of a scanned room."""
    points = surface_points(mesh, spacing=FOOTPRINT_CELL_M / 2)
    z = points[:, 2]
    floor_z, top = float(np.percentile(z, 1)), float(np.percentile(z, 99))
    if not top - floor_z > 0.1:
        raise SourceFormatError(
            name, f"mesh spans only {top - floor_z:.3f} m vertically; cannot find floor and ceiling"
        )
    xy = points[(z >= floor_z - 0.1) & (z <= top), :2]
    polygon = footprint_polygon(xy)
    if polygon.is_empty or polygon.area <= 0:
        raise SourceFormatError(name, "mesh footprint is empty")
    return Room(
        floor_polygon=np.asarray(polygon.exterior.coords)[:-1],  # (V, 2), no repeated first vertex
        floor_z=floor_z,
        height=top - floor_z,
        area_m2=float(polygon.area),
    )


# ----------------------------------------------------------------------------------------------
# Instance labels and visibility
# ----------------------------------------------------------------------------------------------


def triangle_labels_from_vertices(triangles: np.ndarray, vertex_labels: np.ndarray) -> np.ndarray:
    """(F,) instance per triangle: the label two of its three vertices share, else its first vertex's."""
    a, b, c = vertex_labels[triangles].T  # (F,) each
    return np.where(b == c, b, a)


def triangle_labels_from_boxes(
    mesh: Mesh, objects: Sequence[SceneObject], margin: float = 0.02
) -> np.ndarray:
    """(F,) instance per triangle: the smallest box (grown by ``margin``) holding its centroid, or -1."""
    centroids = mesh.vertices[mesh.triangles].mean(axis=1)  # (F, 3)
    labels = np.full(len(centroids), BACKGROUND, dtype=np.int64)
    volume = np.full(len(centroids), np.inf)
    for obj in objects:
        local = (centroids - obj.center) @ obj.rotation  # (F, 3) in box axes
        inside = np.all(np.abs(local) <= obj.extent / 2 + margin, axis=1)
        take = inside & (float(np.prod(obj.extent)) < volume)
        labels[take], volume[take] = obj.instance_id, float(np.prod(obj.extent))
    return labels


class VisibilityRenderer:
    """Ray-casts a labelled mesh from a camera into an instance mask (nearest surface wins).

    Masks are cast at reduced resolution (longest side at most ``max_side``); boxes and pixel counts
    are scaled back to the full image.
    """

    def __init__(self, mesh: Mesh, triangle_labels: np.ndarray, max_side: int = VISIBILITY_MAX_SIDE):
        if triangle_labels.shape != (len(mesh.triangles),):
            raise ValueError(
                f"need one label per triangle, got {triangle_labels.shape} for {len(mesh.triangles)}"
            )
        self.max_side = max_side
        self.triangle_labels = np.asarray(triangle_labels, dtype=np.int64)
        self._scene = o3d.t.geometry.RaycastingScene()
        self._scene.add_triangles(
            o3d.core.Tensor(mesh.vertices.astype(np.float32)),
            o3d.core.Tensor(mesh.triangles.astype(np.uint32)),
        )

    def instance_mask(self, cam_to_world: np.ndarray, k: Intrinsics, width: int, height: int) -> np.ndarray:
        """(h, w) instance id per pixel (``BACKGROUND`` = -1) at the reduced resolution."""
        scale = min(1.0, self.max_side / max(width, height))
        w, h = max(1, round(width * scale)), max(1, round(height * scale))
        u = (np.arange(w) + 0.5) * (width / w)  # full-resolution x of each cast pixel centre
        v = (np.arange(h) + 0.5) * (height / h)
        x = np.broadcast_to(((u - k.cx) / k.fx)[None, :], (h, w))
        y = np.broadcast_to(((v - k.cy) / k.fy)[:, None], (h, w))
        dirs_cam = np.stack([x, y, np.ones((h, w))], axis=-1)  # (h, w, 3) OpenCV camera rays
        dirs = dirs_cam @ cam_to_world[:3, :3].T  # (h, w, 3) in world
        origins = np.broadcast_to(cam_to_world[:3, 3], (h, w, 3))
        rays = np.concatenate([origins, dirs], axis=-1).astype(np.float32)  # (h, w, 6)
        hit = self._scene.cast_rays(o3d.core.Tensor(rays))
        prim = hit["primitive_ids"].numpy().astype(np.int64)  # (h, w)
        valid = prim != o3d.t.geometry.RaycastingScene.INVALID_ID
        mask = np.full((h, w), BACKGROUND, dtype=np.int64)
        mask[valid] = self.triangle_labels[prim[valid]]
        return mask

    def visible(
        self, cam_to_world: np.ndarray, k: Intrinsics, width: int, height: int
    ) -> tuple[Visibility, ...]:
        """The frame's ``visible`` list in full-resolution pixels."""
        return visibility_from_mask(self.instance_mask(cam_to_world, k, width, height), size=(width, height))


# ----------------------------------------------------------------------------------------------
# Frames and video
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceFrame:
    """A candidate frame: its pose and intrinsics plus where its pixels come from."""

    name: str  # how logs name it (file or key)
    cam_to_world: np.ndarray  # (4, 4), may be non-finite
    intrinsics: Intrinsics
    image: str | int  # image URI, or frame number in the source video
    visible: tuple[Visibility, ...] | None = None  # from the source's own instance mask; None: ray-cast


def assemble_frames(
    candidates: Sequence[SourceFrame],
    renderer: VisibilityRenderer,
    width: int,
    height: int,
    fps: float,
    drop_reasons: Counter,
) -> tuple[tuple[Frame, ...], tuple[SourceFrame, ...]]:
    """Keeps candidates with a finite pose, numbers them 0.. as video frames and adds visibility.

    Dropped frames are counted in ``drop_reasons[DROP_NON_FINITE_POSE]``. Timestamps are video
    time, ``index / fps``. Visibility is the candidate's own (from the source's instance masks)
    when it has one, else ``renderer`` ray-casts it.

    Returns:
        (frames, kept candidates), in video order.
    """
    frames, kept = [], []
    for cand in candidates:
        if not np.all(np.isfinite(cand.cam_to_world)):
            drop_reasons[DROP_NON_FINITE_POSE] += 1
            continue
        index = len(frames)
        frames.append(
            Frame(
                index=index,
                timestamp=index / fps,
                cam_to_world=cand.cam_to_world,
                intrinsics=cand.intrinsics,
                visible=cand.visible
                if cand.visible is not None
                else renderer.visible(cand.cam_to_world, cand.intrinsics, width, height),
            )
        )
        kept.append(cand)
    return tuple(frames), tuple(kept)


def even_size(width: int, height: int) -> tuple[int, int]:
    """Video size for an image size: H.264 (yuv420p) needs even sides, so an odd last row/column is cropped."""
    return width - width % 2, height - height % 2


def iter_video_frames(result: ReadResult) -> Iterator[np.ndarray]:
    """Yields the scene's video frames, (H, W, 3) uint8, in order: each image turned by
    ``result.quarter_turns``, then cropped to the video size."""
    w, h = result.scene.video.width, result.scene.video.height
    if result.source_video is None:
        for uri in result.frame_images:
            img = np.rot90(read_image(uri), result.quarter_turns)
            # the video is the image, less the last row/column of an odd side
            if img.shape[0] - h not in (0, 1) or img.shape[1] - w not in (0, 1):
                raise SourceFormatError(
                    uri, f"image is {img.shape[1]}x{img.shape[0]}, the scene's video is {w}x{h}"
                )
            yield np.ascontiguousarray(img[:h, :w])
        return
    yield from _decode_video_frames(
        result.source_video, result.source_video_frames, w, h, result.quarter_turns
    )


def _decode_video_frames(
    uri: str, wanted: Sequence[int], width: int, height: int, quarter_turns: int = 0
) -> Iterator[np.ndarray]:
    wanted_set, remaining = set(wanted), len(set(wanted))
    source = io.BytesIO(storage.read_bytes(uri)) if storage.is_remote(uri) else storage.filesystem(uri)[1]
    try:
        with av.open(source, mode="r") as container:
            for number, frame in enumerate(container.decode(video=0)):
                if number in wanted_set:
                    img = np.rot90(frame.to_ndarray(format="rgb24"), quarter_turns)
                    yield np.ascontiguousarray(img[:height, :width])
                    remaining -= 1
                    if remaining == 0:
                        return
    except av.error.FFmpegError as e:
        raise SourceFormatError(uri, f"cannot decode video ({e})") from e
    if remaining:
        raise SourceFormatError(
            uri, f"video ended before frame {max(wanted)} ({remaining} wanted frames missing)"
        )


def video_size(uri: str) -> tuple[int, int]:
    """``(width, height)`` of the first video stream of a video file."""
    source = io.BytesIO(storage.read_bytes(uri)) if storage.is_remote(uri) else storage.filesystem(uri)[1]
    try:
        with av.open(source, mode="r") as container:
            if not container.streams.video:
                raise SourceFormatError(uri, "no video stream")
            stream = container.streams.video[0]
            return stream.codec_context.width, stream.codec_context.height
    except av.error.FileNotFoundError as e:
        raise FileNotFoundError(f"{uri}: no such file") from e
    except av.error.FFmpegError as e:
        raise SourceFormatError(uri, f"cannot open video ({e})") from e


def video_fps(times_s: Sequence[float]) -> int:
    """Integer frame rate of the output video from the capture times of the kept source frames."""
    steps = np.diff(np.asarray(times_s, dtype=np.float64))
    steps = steps[steps > 0]
    return max(1, round(1.0 / float(np.median(steps)))) if len(steps) else 1


def build_result(
    *,
    scene_id: str,
    dataset: str,
    split: str,
    source_uri: str,
    room: Room,
    objects: Sequence[SceneObject],
    objects_skipped: int,
    candidates: Sequence[SourceFrame],
    renderer: VisibilityRenderer,
    image_width: int,
    image_height: int,
    fps: int,
    drop_reasons: Counter,
    source_video: str | None = None,
    extra: dict[str, Any] | None = None,
    quarter_turns: int = 0,
) -> ReadResult:
    """Assembles frames (dropping non-finite poses), the video description and the scene.

    ``drop_reasons`` may already count frames the reader left out (no pose for an image, ...).
    ``image_width`` x ``image_height`` is the size after ``quarter_turns`` (see :class:`ReadResult`).
    The scene records where it came from under ``extra["source"]``.
    """
    width, height = even_size(image_width, image_height)
    frames, kept = assemble_frames(candidates, renderer, width, height, fps, drop_reasons)
    dropped = sum(drop_reasons.values())
    if not frames:
        raise SourceFormatError(source_uri, f"no usable frames: all {dropped} dropped ({dict(drop_reasons)})")
    if dropped:
        logger.warning(
            "%s/%s: dropped %d of %d frames (%s)",
            dataset,
            scene_id,
            dropped,
            dropped + len(frames),
            dict(drop_reasons),
        )
    source = {
        "uri": source_uri,
        "frames": [cand.name for cand in kept],
        "frames_dropped": dropped,
        "drop_reasons": dict(drop_reasons),
        "objects_skipped": objects_skipped,
        "visibility": {  # where each kept frame's ``visible`` came from
            "instance_masks": sum(cand.visible is not None for cand in kept),
            "ray_cast": sum(cand.visible is None for cand in kept),
        },
        **(extra or {}),
    }
    scene = Scene(
        scene_id=scene_id,
        dataset=dataset,
        split=split,
        room=room,
        objects=tuple(objects),
        video=VideoInfo(uri=VIDEO_FILE, fps=float(fps), num_frames=len(frames), width=width, height=height),
        frames=frames,
        extra={"source": source},
    )
    return ReadResult(
        scene=scene,
        frames_dropped=dropped,
        drop_reasons=dict(drop_reasons),
        frame_images=tuple(str(c.image) for c in kept) if source_video is None else (),
        source_video=source_video,
        source_video_frames=tuple(int(c.image) for c in kept) if source_video is not None else (),
        objects_skipped=objects_skipped,
        quarter_turns=quarter_turns,
    )
