"""A stand-in for ``habitat_sim`` (0.3.x API) with just what :mod:`datagen.routing.habitat` uses.

habitat-sim is conda-only, so tests put this module in ``sys.modules["habitat_sim"]``. It keeps
habitat's documented semantics where our adapter depends on them:

- Y-up world: the stage mesh is read from the binary glTF named by the stage config given as
  ``SimulatorConfiguration.scene_id``; the config must declare habitat's own frame (``up`` +Y,
  ``front`` -Z), anything else is refused rather than silently turned.
- ``Simulator.recompute_navmesh(pathfinder, settings)`` reads the mesh as Recast does, simplified
  to exact polygons: a walkable surface is a triangle whose winding makes it face up (within
  ``agent_max_slope``); a surface at height h is not walkable under a face reaching between
  h + ``agent_max_climb`` and h + ``agent_height``; what is left is eroded by ``agent_radius``
  (mitred, where Recast's voxel erosion rounds corners). Each surface height is a level of its own,
  so a table top becomes a navmesh island as in habitat.
- ``PathFinder.snap_point`` gives the nearest navmesh point (NaN when none lies in Detour's search
  box of half extents 2, 4, 2 m); ``find_path`` snaps both ends and finds the exact shortest path
  within one island (a visibility graph in the XZ plane); ``points`` are float32 3-vectors.
- ``build_navmesh_vertices`` / ``build_navmesh_vertex_indices`` list three vertices per triangle.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import networkx as nx
import numpy as np
import shapely
from shapely.geometry import Point, Polygon
from shapely.ops import nearest_points

__version__ = "0.3.3+fake"
SEARCH_HALF_EXTENTS = np.array([2.0, 4.0, 2.0])


def read_glb(path: str | Path) -> np.ndarray:
    """(F, 3, 3) float32 triangles of the first primitive of a binary glTF."""
    data = Path(path).read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data)), "not a glTF 2.0 binary"
    json_length, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A
    gltf = json.loads(data[20 : 20 + json_length])
    bin_length, bin_type = struct.unpack_from("<II", data, 20 + json_length)
    assert bin_type == 0x004E4942
    binary = data[28 + json_length : 28 + json_length + bin_length]

    def accessor(index: int, dtype: str) -> np.ndarray:
        acc = gltf["accessors"][index]
        view = gltf["bufferViews"][acc["bufferView"]]
        width = {"VEC3": 3, "SCALAR": 1}[acc["type"]]
        return np.frombuffer(binary, dtype, acc["count"] * width, view.get("byteOffset", 0))

    primitive = gltf["meshes"][0]["primitives"][0]
    assert primitive.get("mode", 4) == 4, "triangles expected"
    vertices = accessor(primitive["attributes"]["POSITION"], "<f4").reshape(-1, 3)
    return vertices[accessor(primitive["indices"], "<u4").reshape(-1, 3)]


class NavMeshSettings:
    def __init__(self):
        self.set_defaults()

    def set_defaults(self):
        self.cell_size, self.cell_height = 0.05, 0.2
        self.agent_height, self.agent_radius = 1.5, 0.1
        self.agent_max_climb, self.agent_max_slope = 0.2, 45.0
        self.include_static_objects = False


class SimulatorConfiguration:
    def __init__(self):
        self.scene_id = ""
        self.create_renderer = True


class AgentConfiguration:
    def __init__(self):
        self.height, self.radius = 1.5, 0.1
        self.sensor_specifications = []


class Configuration:
    def __init__(self, sim_cfg: SimulatorConfiguration, agents: list[AgentConfiguration]):
        self.sim_cfg, self.agents = sim_cfg, agents


class ShortestPath:
    def __init__(self):
        self.requested_start = np.zeros(3, np.float32)
        self.requested_end = np.zeros(3, np.float32)
        self.points: list[np.ndarray] = []
        self.geodesic_distance = math.inf


def bake(triangles: np.ndarray, settings: NavMeshSettings) -> list[tuple[float, Polygon]]:
    """Navmesh islands (height, XZ polygon) of a Y-up triangle soup."""
    triangles = triangles.astype(np.float64)
    normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    facing_up = normals[:, 1] / np.maximum(np.linalg.norm(normals, axis=1), 1e-12)
    walkable = facing_up > math.cos(math.radians(settings.agent_max_slope))
    heights = np.round(triangles[:, :, 1].mean(axis=1), 3)
    low, high = triangles[:, :, 1].min(axis=1), triangles[:, :, 1].max(axis=1)
    shadows = shapely.polygons(triangles[:, :, [0, 2]])  # (F,) XZ shadows; vertical faces have none
    islands = []
    for h in np.unique(heights[walkable]):
        surface = shapely.union_all(shadows[walkable & (heights == h)])
        blocking = (high > h + settings.agent_max_climb) & (low < h + settings.agent_height)
        free = surface.difference(shapely.union_all(shadows[blocking & (shapely.area(shadows) > 0)]))
        free = free.buffer(-settings.agent_radius, join_style="mitre")
        islands += [(float(h), p) for p in shapely.get_parts(free) if p.area > 0]
    return islands


class PathFinder:
    def __init__(self):
        self._islands: list[tuple[float, Polygon]] = []

    @property
    def is_loaded(self) -> bool:
        return bool(self._islands)

    def save_nav_mesh(self, path: str) -> bool:
        Path(path).write_text(json.dumps([[h, p.wkt] for h, p in self._islands]))
        return True

    def load_nav_mesh(self, path: str) -> bool:
        self._islands = [(h, shapely.from_wkt(w)) for h, w in json.loads(Path(path).read_text())]
        return self.is_loaded

    def _triangles(self) -> list[np.ndarray]:
        out = []
        for h, polygon in self._islands:
            for t in shapely.get_parts(shapely.constrained_delaunay_triangles(polygon)):
                xz = np.asarray(t.exterior.coords)[:3]
                out += [np.array([x, h, z], np.float32) for x, z in xz]
        return out

    def build_navmesh_vertices(self, island_index: int = -1) -> list[np.ndarray]:
        return self._triangles()

    def build_navmesh_vertex_indices(self, island_index: int = -1) -> list[int]:
        return list(range(len(self._triangles())))

    def _nearest(self, point) -> tuple[int, np.ndarray] | None:
        p = np.asarray(point, np.float64)
        best = None
        for k, (h, polygon) in enumerate(self._islands):
            q = nearest_points(polygon, Point(p[0], p[2]))[0]
            candidate = np.array([q.x, h, q.y])
            if np.all(np.abs(candidate - p) <= SEARCH_HALF_EXTENTS) and (
                best is None or np.linalg.norm(candidate - p) < np.linalg.norm(best[1] - p)
            ):
                best = (k, candidate)
        return best

    def snap_point(self, point, island_index: int = -1) -> np.ndarray:
        nearest = self._nearest(point)
        return np.full(3, np.nan, np.float32) if nearest is None else nearest[1].astype(np.float32)

    def find_path(self, path: ShortestPath) -> bool:
        path.points, path.geodesic_distance = [], math.inf
        start, end = self._nearest(path.requested_start), self._nearest(path.requested_end)
        if start is None or end is None or start[0] != end[0]:
            return False
        h, polygon = self._islands[start[0]]
        rings = [polygon.exterior, *polygon.interiors]
        nodes = np.concatenate(
            [np.asarray(r.coords)[:-1] for r in rings] + [[start[1][[0, 2]], end[1][[0, 2]]]]
        )
        i, j = np.triu_indices(len(nodes), 1)
        segments = shapely.linestrings(np.stack([nodes[i], nodes[j]], axis=1))
        seen = shapely.covers(polygon.buffer(1e-6, join_style="mitre"), segments)
        graph = nx.Graph()
        graph.add_weighted_edges_from(
            (a, b, float(np.linalg.norm(nodes[a] - nodes[b]))) for a, b in zip(i[seen], j[seen], strict=True)
        )
        try:
            order = nx.dijkstra_path(graph, len(nodes) - 2, len(nodes) - 1)
        except (nx.NetworkXNoPath, nx.NodeNotFound):
            return False
        path.points = [np.array([nodes[k][0], h, nodes[k][1]], np.float32) for k in order]
        corners = nodes[order]  # (P, 2)
        path.geodesic_distance = float(np.linalg.norm(np.diff(corners, axis=0), axis=1).sum())
        return True


class Simulator:
    """Loads the stage named by ``sim_cfg.scene_id`` (a stage config beside its ``.glb``)."""

    def __init__(self, config: Configuration):
        if not config.agents:
            raise RuntimeError("Config has not agents specified.  Must specify at least 1 agent")
        stage_file = Path(config.sim_cfg.scene_id)
        stage = json.loads(stage_file.read_text())
        if stage.get("up") != [0, 1, 0] or stage.get("front") != [0, 0, -1]:
            raise ValueError(f"fake habitat_sim only loads stages in its own frame, got {stage}")
        self.triangles = read_glb(stage_file.parent / stage["render_asset"])  # (F, 3, 3) Y-up
        self.pathfinder = PathFinder()
        self.closed = False

    def recompute_navmesh(self, pathfinder: PathFinder, navmesh_settings: NavMeshSettings) -> bool:
        pathfinder._islands = bake(self.triangles, navmesh_settings)
        return pathfinder.is_loaded

    def close(self, destroy: bool = True) -> None:
        self.closed = True

    def __enter__(self) -> Simulator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
