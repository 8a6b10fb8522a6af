"""Object boxes and the room from source geometry: gravity-aligned minimal boxes of instance
points, annotated oriented boxes (``normalizedAxes`` rows = box axes), the floor footprint and
the room (floor height, ceiling height, floor polygon) of a mesh.

World metres, Z up. Shapes: ``N`` points.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import shapely
import shapely.affinity
from scipy import ndimage
from shapely.geometry.polygon import orient

from datagen.readers.common import SourceFormatError
from datagen.readers.files import as_array, require
from datagen.readers.ply import Mesh, surface_points
from vlm3r_core.scene import Room

MIN_EXTENT_M = 0.01  # boxes are at least 1 cm along every axis
FOOTPRINT_CELL_M = 0.1  # grid cell of the floor footprint


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
