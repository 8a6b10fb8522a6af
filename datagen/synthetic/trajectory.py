"""Hand-held scan trajectories through the free space of a synthetic room.

The camera walks a smooth tour through the room's free floor (cells that keep
``MIN_CLEARANCE_M`` from walls and from every object footprint), through waypoints spread over
the room by farthest-point sampling, at 1.2 to 1.7 m height with a small walking bob. It looks
between its walking direction and the middle of the furniture, sweeps left and right ("looking
around") and tilts down towards furniture height, as a person scanning a room with a phone does.

Poses are camera-to-world 4x4 with OpenCV camera axes (x right, y down, z forward), Z-up world.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.ndimage
import scipy.sparse
import scipy.sparse.csgraph
import shapely

from datagen.synthetic.layout import Layout

CAMERA_HEIGHT_RANGE_M = (1.2, 1.7)
CELL_M = 0.1  # grid of the free-space search
MIN_CLEARANCE_M = 0.3  # the camera path keeps at least this distance from walls and footprints
CLEARANCE_TRIES_M = (0.55, 0.45, 0.35)  # clearance of the planning grid, relaxed when the room is crowded
MIN_PATH_M = 2.0
MAX_WALK_SPEED_MPS = 1.0  # longer tours are cut: a person scanning walks slowly
MAX_TURN_DEG_S = 70.0


class TrajectoryError(ValueError):
    """The room leaves no free space for a scan (too crowded); the caller tries another layout."""


@dataclass(frozen=True)
class Trajectory:
    cam_to_world: np.ndarray  # (N, 4, 4)
    timestamps: np.ndarray  # (N,) seconds


def clearance(layout: Layout, xy: np.ndarray) -> np.ndarray:
    """(M,) distance in metres from points (M, 2) to the nearest wall or object footprint.

    Points outside the room or inside a footprint get 0.
    """
    room = shapely.Polygon(layout.room.floor_polygon)
    points = shapely.points(xy)
    dist = shapely.distance(room.exterior, points)
    if layout.objects:
        footprints = shapely.union_all([o.footprint() for o in layout.objects])
        dist = np.minimum(dist, shapely.distance(footprints, points))
    return np.where(shapely.contains_xy(room, xy[:, 0], xy[:, 1]), dist, 0.0)


def _free_grid(layout: Layout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell centres (Gy, Gx, 2), their clearance (Gy, Gx), and the largest free component (Gy, Gx) bool."""
    lo = layout.room.floor_polygon.min(axis=0)
    hi = layout.room.floor_polygon.max(axis=0)
    xs = np.arange(lo[0] + CELL_M / 2, hi[0], CELL_M)
    ys = np.arange(lo[1] + CELL_M / 2, hi[1], CELL_M)
    centres = np.stack(np.meshgrid(xs, ys), axis=-1)  # (Gy, Gx, 2)
    clear = clearance(layout, centres.reshape(-1, 2)).reshape(centres.shape[:2])  # (Gy, Gx)
    for threshold in CLEARANCE_TRIES_M:
        labels, count = scipy.ndimage.label(clear >= threshold, structure=np.ones((3, 3)))
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())[1:]
        if sizes.max() * CELL_M**2 >= 1.5:
            return centres, clear, labels == (int(np.argmax(sizes)) + 1)
    raise TrajectoryError("no connected free floor of 1.5 m2 for the camera")


def _waypoints(rng: np.random.Generator, cells: np.ndarray, count: int) -> np.ndarray:
    """Indices into ``cells`` (M, 2) of ``count`` farthest-point samples, ordered around their centre."""
    chosen = [int(rng.integers(len(cells)))]
    dist = np.linalg.norm(cells - cells[chosen[0]], axis=1)
    for _ in range(count - 1):
        chosen.append(int(np.argmax(dist)))
        dist = np.minimum(dist, np.linalg.norm(cells - cells[chosen[-1]], axis=1))
    chosen = np.array(chosen)
    rel = cells[chosen] - cells[chosen].mean(axis=0)
    ordered = chosen[np.argsort(np.arctan2(rel[:, 1], rel[:, 0]))]
    return np.roll(ordered, -int(rng.integers(count)))


def _grid_graph(free: np.ndarray, clear: np.ndarray) -> scipy.sparse.csr_matrix:
    """8-connected graph over the free cells (node ids in row-major order of ``free``).

    Edges cost length x (1 + 0.3 / clearance), so shortest paths keep off obstacles.
    """
    node = np.full(free.shape, -1, dtype=np.int64)
    node[free] = np.arange(int(free.sum()))
    ys, xs = np.nonzero(free)
    gy, gx = free.shape
    rows, cols, costs = [], [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):  # each undirected neighbour pair once
        ny, nx = ys + dy, xs + dx
        ok = (ny < gy) & (nx >= 0) & (nx < gx)
        ok[ok] = free[ny[ok], nx[ok]]
        a, b = node[ys[ok], xs[ok]], node[ny[ok], nx[ok]]
        cost = CELL_M * np.hypot(dy, dx) * (1 + 0.3 / np.minimum(clear[ys[ok], xs[ok]], clear[ny[ok], nx[ok]]))
        rows += [a, b]
        cols += [b, a]
        costs += [cost, cost]
    n = int(free.sum())
    graph = scipy.sparse.csr_matrix((np.concatenate(costs), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return graph


def _tour(layout: Layout, rng: np.random.Generator) -> np.ndarray:
    """Polyline (M, 2) of grid cells through the free space, visiting spread-out waypoints."""
    centres, clear, free = _free_grid(layout)
    graph = _grid_graph(free, clear)
    cells = centres[free]  # (M, 2) in node order
    count = int(np.clip(round(np.sqrt(layout.room.area_m2) / 1.3) + 1, 3, 7))
    stops = _waypoints(rng, cells, min(count, len(cells)))
    path = [stops[0]]
    for src, dst in zip(stops[:-1], stops[1:], strict=True):
        _, pred = scipy.sparse.csgraph.dijkstra(graph, indices=int(src), return_predecessors=True)
        segment = [int(dst)]
        while segment[-1] != src:
            segment.append(int(pred[segment[-1]]))
        path += segment[::-1][1:]
    return cells[np.array(path)]


def _smooth_path(layout: Layout, polyline: np.ndarray) -> np.ndarray:
    """Resamples the polyline every 5 cm and smooths it, as much as clearance allows. Returns (S, 2)."""
    seg = np.linalg.norm(np.diff(polyline, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    if arc[-1] < MIN_PATH_M:
        raise TrajectoryError(f"free floor allows only a {arc[-1]:.1f} m walk, need {MIN_PATH_M} m")
    s = np.linspace(0, arc[-1], max(2, int(arc[-1] / 0.05)))
    dense = np.stack([np.interp(s, arc, polyline[:, 0]), np.interp(s, arc, polyline[:, 1])], axis=1)  # (S, 2)
    for sigma in (8.0, 4.0, 2.0, 0.0):
        smooth = scipy.ndimage.gaussian_filter1d(dense, sigma, axis=0, mode="nearest") if sigma else dense
        if clearance(layout, smooth).min() >= MIN_CLEARANCE_M:
            return smooth
    raise TrajectoryError("the camera path comes closer than the clearance to an obstacle")


def plan_trajectory(layout: Layout, num_frames: int, fps: float, rng: np.random.Generator) -> Trajectory:
    """A hand-held scan of ``num_frames`` frames at ``fps`` through the room of ``layout``.

    The walk follows the tour at constant speed, at most ``MAX_WALK_SPEED_MPS`` (the tour is cut
    short when the video is too short for all of it) and at least ``MIN_PATH_M`` long.
    """
    path = _smooth_path(layout, _tour(layout, rng))
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    walk = min(arc[-1], max(MIN_PATH_M, MAX_WALK_SPEED_MPS * (num_frames - 1) / fps))
    s = np.linspace(0, walk, num_frames)
    xy = np.stack([np.interp(s, arc, path[:, 0]), np.interp(s, arc, path[:, 1])], axis=1)  # (N, 2)
    t = np.arange(num_frames) / fps

    # Where the camera looks: between walking direction and the middle of the furniture, sweeping.
    ahead = np.stack([np.interp(np.minimum(s + 0.3, arc[-1]), arc, path[:, k]) for k in (0, 1)], axis=1)
    behind = np.stack([np.interp(np.maximum(s - 0.3, 0), arc, path[:, k]) for k in (0, 1)], axis=1)
    forward = ahead - behind
    forward /= np.maximum(np.linalg.norm(forward, axis=1, keepdims=True), 1e-9)
    focus = np.mean([o.center[:2] for o in layout.objects], axis=0) if layout.objects else path.mean(axis=0)
    to_focus = focus - xy
    dist = np.linalg.norm(to_focus, axis=1, keepdims=True)
    focus_weight = np.clip(dist - 0.5, 0.0, 1.0)  # fades out near the focus, where its direction turns fast
    look = 0.6 * forward + focus_weight * to_focus / np.maximum(dist, 1e-9)
    look = np.where(np.linalg.norm(look, axis=1, keepdims=True) > 1e-6, look, forward)
    yaw = np.unwrap(np.arctan2(look[:, 1], look[:, 0]))
    sweep_amp, sweep_period = rng.uniform(0.25, 0.5), rng.uniform(4.0, 7.0)
    yaw = yaw + sweep_amp * np.sin(2 * np.pi * t / sweep_period + rng.uniform(0, 2 * np.pi))
    max_step = np.radians(MAX_TURN_DEG_S) / fps  # a person turns the phone at a bounded rate
    for i in range(1, num_frames):
        yaw[i] = yaw[i - 1] + np.clip(yaw[i] - yaw[i - 1], -max_step, max_step)
    yaw = scipy.ndimage.gaussian_filter1d(yaw, max(0.2 * fps, 0.5), mode="nearest")
    roll = 0.03 * np.sin(2 * np.pi * t / rng.uniform(3.0, 6.0) + rng.uniform(0, 2 * np.pi))
    height = rng.uniform(1.35, 1.55) + 0.03 * np.sin(2 * np.pi * t / 1.1 + rng.uniform(0, 2 * np.pi))
    # Tilt down towards furniture height (0.6 m) at the focus: steeper when close, as in small rooms.
    pitch = np.clip(-np.arctan2(height - 0.6, np.maximum(dist[:, 0], 0.5)), -0.6, -0.15)
    pitch = scipy.ndimage.gaussian_filter1d(pitch, max(0.5 * fps, 0.5), mode="nearest")
    pitch = pitch + 0.05 * np.sin(2 * np.pi * t / rng.uniform(4.0, 7.0) + rng.uniform(0, 2 * np.pi))

    # OpenCV camera axes in world: z forward, x right = forward x up, y down = forward x right; then roll.
    fwd = np.stack([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)], axis=1)  # (N, 3)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right, axis=1, keepdims=True)
    down = np.cross(fwd, right)
    c, sn = np.cos(roll)[:, None], np.sin(roll)[:, None]
    right, down = c * right + sn * down, -sn * right + c * down
    cam_to_world = np.tile(np.eye(4), (num_frames, 1, 1))  # (N, 4, 4)
    cam_to_world[:, :3, 0], cam_to_world[:, :3, 1], cam_to_world[:, :3, 2] = right, down, fwd
    cam_to_world[:, :3, 3] = np.column_stack([xy, layout.room.floor_z + height])
    return Trajectory(cam_to_world=cam_to_world, timestamps=t)
