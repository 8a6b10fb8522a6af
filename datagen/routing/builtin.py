"""Route planning on the scene geometry: walkable floor, shortest paths, turn classification.

The walkable floor is the room's floor polygon shrunk by the agent radius, minus the footprints of
the objects that block a walking agent, each grown by the agent radius (mitred corners, so the
clearance is at least the radius everywhere). Objects block when their box reaches between
``min_obstacle_height_m`` and ``agent_height_m`` above the floor (a rug does not, a ceiling lamp does
not, a table does).

Shortest paths are exact Euclidean shortest paths in that polygon with holes: a visibility graph
over the polygon's vertices (shapely for the segment-in-polygon tests, networkx for Dijkstra). The
path's corners are obstacle corners, which are the natural turn points of a route description.
:meth:`FloorPlan.shortest_other_way` finds the best path that passes a free-standing obstacle on
the other side, so a route with a near-equal alternative way round can be rejected.

:class:`RoutePlanner` is what the route task asks of a planner. :class:`FloorPlan` is the built-in
one (pip-installable dependencies only); :mod:`datagen.routing.habitat` computes the walkable floor
and the shortest paths with habitat-sim's navmesh instead.

Everything is 2D in world XY (metres, Z up); angles are counter-clockwise seen from +Z, so a
positive turn is a left turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import networkx as nx
import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import dijkstra
from shapely.geometry import LineString, MultiPolygon, Point, Polygon
from shapely.ops import nearest_points, unary_union

from vlm3r_core.scene import Scene, SceneObject

_TOLERANCE_M = 1e-6  # segments may run along the free-space boundary
APPROACH_TIE_M = 0.05
APPROACH_SPREAD_M = 0.3


@dataclass(frozen=True)
class RoutePlannerConfig:
    """Agent and floor settings.

    Attributes:
        agent_radius_m: clearance kept from walls and obstacles.
        agent_height_m: objects entirely above this height (over the floor) do not block.
        min_obstacle_height_m: objects entirely below this height (over the floor) do not block.
    """

    agent_radius_m: float = 0.2
    agent_height_m: float = 1.6
    min_obstacle_height_m: float = 0.1

    def __post_init__(self):
        if not self.agent_radius_m > 0:
            raise ValueError(f"agent_radius_m must be > 0, got {self.agent_radius_m}")
        if not self.agent_height_m > self.min_obstacle_height_m >= 0:
            raise ValueError(
                f"need agent_height_m > min_obstacle_height_m >= 0, got {self.agent_height_m}, {self.min_obstacle_height_m}"
            )


class RoutePlanner(Protocol):
    """What the route task uses: object footprints, where to stand by an object, shortest paths and
    the best way round the other side of an obstacle (see :class:`FloorPlan` for the meanings).

    Attributes:
        name: the backend, recorded with each question (``"builtin"``, ``"habitat"``).
        footprints: instance id -> the object's box projected on the floor.
    """

    name: str
    footprints: dict[int, Polygon]

    def approach_point(self, instance_id: int, toward_xy: np.ndarray) -> tuple[np.ndarray, float] | None: ...

    def shortest_path(self, start_xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray | None: ...

    def shortest_other_way(self, path: np.ndarray) -> float: ...


def footprint(obj: SceneObject) -> Polygon:
    """The object's box projected on the floor (convex hull of its corners in XY)."""
    return shapely.convex_hull(shapely.multipoints(obj.corners()[:, :2]))


def signed_turn_deg(heading_from: np.ndarray, heading_to: np.ndarray) -> float:
    """Signed angle in (-180, 180] from one 2D heading to the next; positive = turn left."""
    cross = heading_from[0] * heading_to[1] - heading_from[1] * heading_to[0]
    dot = heading_from @ heading_to
    return float(np.degrees(np.arctan2(cross, dot)))


class FloorPlan:
    """The walkable floor of a scene and shortest paths on it.

    Args:
        scene: a validated scene (room polygon, floor height, object boxes).
        config: agent settings.
        free: the walkable floor (world XY) when another backend computed it (habitat's navmesh);
            by default the room minus the grown footprints of the blocking objects.
    """

    name = "builtin"

    def __init__(
        self,
        scene: Scene,
        config: RoutePlannerConfig = RoutePlannerConfig(),
        free: Polygon | MultiPolygon | None = None,
    ):
        self.config = config
        self.footprints: dict[int, Polygon] = {o.instance_id: footprint(o) for o in scene.objects}
        self.free = self._walkable_floor(scene) if free is None else free
        self._free_check = self.free.buffer(_TOLERANCE_M, join_style="mitre")
        shapely.prepare(self._free_check)
        self._nodes = self._ring_vertices(self.free)  # (V, 2)
        self._graph = nx.Graph()
        self._graph.add_nodes_from(range(len(self._nodes)))
        i, j = np.triu_indices(len(self._nodes), 1)
        visible = self._visible(self._nodes[i], self._nodes[j])
        lengths = np.linalg.norm(self._nodes[i] - self._nodes[j], axis=1)
        self._graph.add_weighted_edges_from(
            zip(i[visible].tolist(), j[visible].tolist(), lengths[visible].tolist(), strict=True)
        )
        self._edges = np.stack([i[visible], j[visible]], axis=1)  # (E, 2) node pairs of the graph
        self._edge_lengths = lengths[visible]  # (E,) metres
        self._hole_points = self._points_inside_holes(self.free)  # (H, 2) one point inside each island
        self._approach: dict[int, list[np.ndarray]] = {}

    def _walkable_floor(self, scene: Scene) -> Polygon | MultiPolygon:
        r = self.config.agent_radius_m
        floor = Polygon(scene.room.floor_polygon).buffer(0)  # buffer(0) repairs self-touching outlines
        blocking = [
            self.footprints[o.instance_id].buffer(r, join_style="mitre")
            for o in scene.objects
            if self._blocks(o, scene.room.floor_z)
        ]
        free = floor.buffer(-r, join_style="mitre")
        return free.difference(unary_union(blocking)) if blocking else free

    def _blocks(self, obj: SceneObject, floor_z: float) -> bool:
        z = obj.corners()[:, 2] - floor_z
        return bool(z.min() < self.config.agent_height_m and z.max() > self.config.min_obstacle_height_m)

    @staticmethod
    def _ring_vertices(geometry) -> np.ndarray:
        polygons = geometry.geoms if isinstance(geometry, MultiPolygon) else [geometry]
        points = []
        for poly in polygons:
            if poly.is_empty:
                continue
            for ring in (poly.exterior, *poly.interiors):
                points.append(np.asarray(ring.coords)[:-1])
        return np.concatenate(points) if points else np.zeros((0, 2))

    @staticmethod
    def _points_inside_holes(geometry) -> np.ndarray:
        """(H, 2): a point inside each hole of the walkable floor (an obstacle standing free, with
        walkable floor all round it)."""
        polygons = geometry.geoms if isinstance(geometry, MultiPolygon) else [geometry]
        points = [
            np.asarray(Polygon(ring).representative_point().coords[0])
            for poly in polygons
            if not poly.is_empty
            for ring in poly.interiors
        ]
        return np.stack(points) if points else np.zeros((0, 2))

    def _crosses_hole_rays(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(M, H) True where segment a[m] -> b[m] crosses the ray from hole point h towards +x.

        Half-open in y, so a closed walk crosses a ray an odd number of times exactly when it winds
        around the ray's origin: a walk and its alternative pass a hole on different sides exactly
        when their crossing counts differ in parity.
        """
        p = self._hole_points  # (H, 2)
        ay, by = a[:, None, 1], b[:, None, 1]  # (M, 1)
        straddles = (ay > p[:, 1]) != (by > p[:, 1])  # (M, H)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = a[:, None, 0] + (p[:, 1] - ay) * (b[:, None, 0] - a[:, None, 0]) / (by - ay)  # (M, H)
        return straddles & (x > p[:, 0])

    def _visible(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """(M,) True where the segment a[m] -> b[m] stays on the walkable floor."""
        if len(a) == 0:
            return np.zeros(0, dtype=bool)
        segments = shapely.linestrings(np.stack([a, b], axis=1))  # (M,) from (M, 2, 2)
        return shapely.covers(self._free_check, segments)

    def is_walkable(self, point_xy: np.ndarray) -> bool:
        return bool(self._free_check.covers(Point(point_xy)))

    def approach_point(self, instance_id: int, toward_xy: np.ndarray) -> tuple[np.ndarray, float] | None:
        """Where to stand by an object: the walkable point nearest to its centre (beside the middle of
        its nearest free side), and that point's distance to the footprint.

        An object with several sides almost equally near (within ``APPROACH_TIE_M``; a table in the
        open) is approached from the side nearest to ``toward_xy`` (where the robot comes from or
        goes to). None when there is no walkable floor, or when two sides are also about as near to
        ``toward_xy`` (within ``APPROACH_SPREAD_M``): "beginning at the X" would be ambiguous.
        """
        if instance_id not in self._approach:
            self._approach[instance_id] = self._approach_candidates(self.footprints[instance_id])
        candidates = self._approach[instance_id]
        if not candidates:
            return None
        distances = [float(np.linalg.norm(c - toward_xy)) for c in candidates]
        order = np.argsort(distances)
        if len(candidates) > 1 and distances[order[1]] - distances[order[0]] < APPROACH_SPREAD_M:
            return None
        best = candidates[order[0]]
        return best, float(self.footprints[instance_id].distance(Point(best)))

    def _approach_candidates(self, target: Polygon) -> list[np.ndarray]:
        """One point per walkable patch whose distance to the target's centre ties with the best."""
        if self.free.is_empty:
            return []
        center = target.centroid
        reach = nearest_points(self.free, center)[0].distance(center) + APPROACH_TIE_M
        near = self.free.intersection(center.buffer(reach))
        candidates: list[np.ndarray] = []
        for part in sorted(getattr(near, "geoms", [near]), key=lambda g: g.distance(center)):
            point = nearest_points(part, center)[0]
            xy = np.array([point.x, point.y])
            if all(np.linalg.norm(xy - c) > APPROACH_SPREAD_M for c in candidates):
                candidates.append(xy)
        return candidates

    def shortest_path(self, start_xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray | None:
        """Exact shortest walkable path as (P, 2) corner points from start to goal, or None if unreachable."""
        start_xy, goal_xy = np.asarray(start_xy, float), np.asarray(goal_xy, float)
        if not (self.is_walkable(start_xy) and self.is_walkable(goal_xy)):
            return None
        if self._visible(start_xy[None], goal_xy[None])[0]:
            return np.stack([start_xy, goal_xy])
        s, g = len(self._nodes), len(self._nodes) + 1
        try:  # join start and goal to the visibility graph, search, then restore it
            for node, xy in ((s, start_xy), (g, goal_xy)):
                seen, lengths = self._visible_nodes(xy)
                self._graph.add_weighted_edges_from(
                    zip([node] * len(seen), seen.tolist(), lengths.tolist(), strict=True)
                )
            order = nx.dijkstra_path(self._graph, s, g)
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            return None
        finally:
            self._graph.remove_nodes_from([s, g])
        coords = {s: start_xy, g: goal_xy}
        return np.stack([coords[k] if k in coords else self._nodes[k] for k in order])

    def _visible_nodes(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Graph nodes in straight view of a walkable point: their numbers (V',) and distances (V',)."""
        visible = np.nonzero(self._visible(np.repeat(xy[None], len(self._nodes), axis=0), self._nodes))[0]
        return visible, np.linalg.norm(self._nodes[visible] - xy, axis=1)

    def shortest_other_way(self, path: np.ndarray) -> float:
        """Length of the shortest walkable path between the ends of ``path`` that passes some
        free-standing obstacle on the other side than ``path`` does; inf when there is none.

        Args:
            path: (P, 2) a walkable path, e.g. from :meth:`shortest_path` (only its ends and the
                side it passes each obstacle on matter).

        A free-standing obstacle is a hole of the walkable floor. Which side of hole h a path passes
        is the parity of its crossings with a ray from inside h (:meth:`_crosses_hole_rays`); per
        hole, Dijkstra runs on the visibility graph doubled by that parity bit, from (start, 0) to
        (goal, the bit ``path`` does not have).
        """
        if len(self._hole_points) == 0:
            return math.inf
        n = len(self._nodes)
        s, g = n, n + 1
        xy = np.concatenate([self._nodes, path[:1], path[-1:]])  # (n + 2, 2)
        edges, lengths = [self._edges], [self._edge_lengths]
        for node in (s, g):
            seen, dist = self._visible_nodes(xy[node])
            edges.append(np.stack([np.full(len(seen), node), seen], axis=1))
            lengths.append(dist)
        if self._visible(path[:1], path[-1:])[0]:
            edges.append(np.array([[s, g]]))
            lengths.append(np.array([np.linalg.norm(path[-1] - path[0])]))
        edges, lengths = np.concatenate(edges), np.concatenate(lengths)  # (E', 2), (E',)
        crossing = self._crosses_hole_rays(xy[edges[:, 0]], xy[edges[:, 1]]).astype(np.int64)  # (E', H)
        path_parity = self._crosses_hole_rays(path[:-1], path[1:]).sum(axis=0) % 2  # (H,)
        m = n + 2  # node k with parity bit b is k + b * m in the doubled graph
        best = math.inf
        for h in range(len(self._hole_points)):
            c = crossing[:, h]
            rows = np.concatenate([edges[:, 0], edges[:, 0] + m])
            cols = np.concatenate([edges[:, 1] + m * c, edges[:, 1] + m * (1 - c)])
            doubled = coo_matrix((np.tile(lengths, 2), (rows, cols)), shape=(2 * m, 2 * m)).tocsr()
            distances = dijkstra(doubled, directed=False, indices=s)  # (2m,)
            best = min(best, float(distances[g + m * (1 - path_parity[h])]))
        return best


def path_length(path: np.ndarray) -> float:
    """Length in metres of a (P, 2) polyline."""
    return float(np.sum(np.linalg.norm(np.diff(path, axis=0), axis=1)))


def simplify_path(path: np.ndarray, tolerance_m: float = 0.1) -> np.ndarray:
    """Drops corners that deviate less than ``tolerance_m`` from a straight walk (Douglas-Peucker)."""
    if len(path) <= 2:
        return path
    return np.asarray(LineString(path).simplify(tolerance_m).coords)
