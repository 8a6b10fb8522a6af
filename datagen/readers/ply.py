"""Triangle meshes from PLY files (ascii and binary) on any storage URI, and points sampled on
their surface. A truncated or malformed file raises :class:`SourceFormatError` naming it.

Shapes: ``V`` vertices, ``F`` triangles, ``N`` points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from datagen.readers.common import SourceFormatError
from vlm3r_core import storage


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
