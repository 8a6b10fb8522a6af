"""habitat-sim as the route planner: walkable floor and shortest paths from its navmesh (Recast/Detour).

Our scenes carry no mesh, so :func:`scene_mesh` builds one from the scene's geometry: the floor
polygon at ``floor_z`` (less the footprints of the objects that come lower than the agent height),
walls extruded from its outline to the room height, and each object's box.
:func:`bake_navmesh` writes it as a binary glTF with a stage config beside it, loads that as the
stage of a sensor-less :class:`habitat_sim.Simulator` (no renderer, no GL context) and bakes the
navmesh with ``Simulator.recompute_navmesh``; the agent radius and height of
:class:`~datagen.routing.builtin.RoutePlannerConfig` become the navmesh settings, and the lowest height that
blocks becomes the highest step the agent climbs.

:class:`HabitatFloorPlan` is a :class:`~datagen.routing.builtin.FloorPlan` whose walkable floor is the
navmesh's floor-level triangles (table tops are navmesh islands of their own and are left out) and
whose shortest paths come from ``PathFinder.find_path`` between points snapped with
``PathFinder.snap_point``. Where to stand by an object and the near-equal way round the other side
of an obstacle (:meth:`~datagen.routing.builtin.FloorPlan.shortest_other_way`) are computed on that floor by
the built-in code: Detour has no search for "the best path passing this obstacle on the other side".

Axes: habitat is Y-up with -Z forward; our world is Z-up. A point maps as habitat ``(x, y, z)`` =
ours ``(x, z, -y)`` (a rotation, so triangle windings and left/right are kept). The mesh is written
in habitat's axes and its stage config says so (``up`` +Y, ``front`` -Z): habitat would otherwise
take a bare ``.glb`` as Z-up and turn it.

API names and signatures checked against habitat-sim v0.3.3 (src/esp/bindings/ShortestPathBindings.cpp,
SimBindings.cpp, src_python/habitat_sim/simulator.py), unchanged in v0.3.4. habitat-sim is
conda-only (``conda install habitat-sim -c conda-forge -c aihabitat``); nothing here imports it
until a habitat planner is asked for.
"""

from __future__ import annotations

import importlib
import json
import math
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from datagen.routing.builtin import FloorPlan, RoutePlannerConfig, footprint
from vlm3r_core.scene import Scene

INSTALL_HINT = (
    "install habitat-sim with conda (conda install habitat-sim -c conda-forge -c aihabitat) "
    "or use the built-in planner (--route-planner builtin)"
)
CELL_HEIGHT_M = 0.05  # voxel height; habitat's default 0.2 would round a 0.1 m climb down to nothing
SNAP_TOLERANCE_M = 0.05  # a point further than this from the navmesh floor is not on it
WELD_M = 1e-3  # closes float32 seams between navmesh triangles when they are merged

# The 12 triangles of a box as corner numbers of SceneObject.corners() (corner 4*i + 2*j + k has
# signs (x, y, z) = (i, j, k) in {-, +}), wound outward (box frames are rotations, never reflections).
_BOX_FACES = np.array(
    [
        [0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5],  # -x, +x
        [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],  # -y, +y
        [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3],  # -z, +z
    ]
)  # fmt: skip


def _vec3(v) -> np.ndarray:
    """(3,) float64 from a habitat 3-vector (a magnum ``Vector3`` or a numpy array)."""
    return np.array([v[0], v[1], v[2]], dtype=np.float64)


def to_habitat(points: np.ndarray) -> np.ndarray:
    """(..., 3) our world (Z up) -> habitat (Y up): ``(x, y, z) -> (x, z, -y)``."""
    points = np.asarray(points, dtype=np.float64)
    return np.stack([points[..., 0], points[..., 2], -points[..., 1]], axis=-1)


def from_habitat(points: np.ndarray) -> np.ndarray:
    """(..., 3) habitat (Y up) -> our world (Z up): ``(x, y, z) -> (x, -z, y)``."""
    points = np.asarray(points, dtype=np.float64)
    return np.stack([points[..., 0], -points[..., 2], points[..., 1]], axis=-1)


# ---- which planner ---------------------------------------------------------------------------


def import_habitat_sim() -> ModuleType:
    """The ``habitat_sim`` module, or an ImportError that says how to get it."""
    try:
        return importlib.import_module("habitat_sim")
    except ImportError as e:
        raise ImportError(
            f"the habitat route planner needs habitat_sim, which does not import here ({e}): {INSTALL_HINT}"
        ) from e


# ---- the scene as a mesh ---------------------------------------------------------------------


@dataclass(frozen=True)
class SceneMesh:
    """A triangle mesh in habitat's axes (Y up, metres).

    Attributes:
        vertices: (V, 3) float32 positions.
        faces: (F, 3) uint32 vertex numbers, counter-clockwise seen from the side the face looks to
            (floor up, walls into the room, boxes outward).
    """

    vertices: np.ndarray
    faces: np.ndarray


def _floor_and_walls(scene: Scene, config: RoutePlannerConfig) -> tuple[np.ndarray, np.ndarray]:
    """Floor triangles and wall quads of the room, our axes: (T, 3, 3) and (W, 3, 3).

    The floor is not drawn under an object whose box comes lower than the agent height: Recast sees
    surfaces, not solids, and would find walkable floor inside a closed box taller than the agent.
    """
    room = scene.room
    # Outer rings counter-clockwise seen from +Z, holes clockwise: the floor is left of every ring.
    outline = shapely.orient_polygons(Polygon(room.floor_polygon).buffer(0))
    standing = [
        footprint(o) for o in scene.objects if o.corners()[:, 2].min() < room.floor_z + config.agent_height_m
    ]
    floor = outline.difference(shapely.union_all(standing)) if standing else outline
    triangles = shapely.get_parts(shapely.constrained_delaunay_triangles(floor))
    xy = np.array([np.asarray(t.exterior.coords)[:3] for t in triangles]).reshape(-1, 3, 2)  # (T, 3, 2)
    u, v = xy[:, 1] - xy[:, 0], xy[:, 2] - xy[:, 0]  # (T, 2) each
    clockwise = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0] < 0  # (T,)
    xy[clockwise] = xy[clockwise][:, ::-1]
    floor = np.concatenate([xy, np.full((*xy.shape[:2], 1), room.floor_z)], axis=-1)  # (T, 3, 3)

    rings = [np.asarray(r.coords) for p in shapely.get_parts(outline) for r in (p.exterior, *p.interiors)]
    a = np.concatenate([r[:-1] for r in rings])  # (E, 2) each wall runs from a to b
    b = np.concatenate([r[1:] for r in rings])
    low, high = room.floor_z, room.floor_z + room.height
    a0, b0 = np.c_[a, np.full(len(a), low)], np.c_[b, np.full(len(b), low)]
    a1, b1 = np.c_[a, np.full(len(a), high)], np.c_[b, np.full(len(b), high)]
    walls = np.concatenate([np.stack([a0, b1, b0], axis=1), np.stack([a0, a1, b1], axis=1)])  # (2E, 3, 3)
    return floor, walls


def scene_mesh(scene: Scene, config: RoutePlannerConfig = RoutePlannerConfig()) -> SceneMesh:
    """The room (floor and walls, no ceiling) and every object's box as one mesh in habitat's axes."""
    floor, walls = _floor_and_walls(scene, config)
    boxes = [o.corners()[_BOX_FACES] for o in scene.objects]  # (12, 3, 3) each
    triangles = np.concatenate([floor, walls, *boxes])  # (F, 3, 3) our axes
    vertices = to_habitat(triangles.reshape(-1, 3)).astype(np.float32)  # (3F, 3)
    faces = np.arange(len(vertices), dtype=np.uint32).reshape(-1, 3)  # (F, 3)
    return SceneMesh(vertices, faces)


def write_glb(mesh: SceneMesh, path: str | Path) -> None:
    """Writes the mesh as binary glTF 2.0: one node, one triangle primitive (positions, indices)."""
    positions = np.ascontiguousarray(mesh.vertices, dtype="<f4").tobytes()
    indices = np.ascontiguousarray(mesh.faces, dtype="<u4").tobytes()
    gltf = {
        "asset": {"version": "2.0", "generator": "vlm3r datagen.routing.habitat"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 1, "mode": 4}]}],
        "buffers": [{"byteLength": len(positions) + len(indices)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(positions), "target": 34962},
            {"buffer": 0, "byteOffset": len(positions), "byteLength": len(indices), "target": 34963},
        ],
        "accessors": [
            {
                "bufferView": 0,
                "componentType": 5126,  # float32
                "count": len(mesh.vertices),
                "type": "VEC3",
                "min": mesh.vertices.min(axis=0).tolist(),
                "max": mesh.vertices.max(axis=0).tolist(),
            },
            {"bufferView": 1, "componentType": 5125, "count": mesh.faces.size, "type": "SCALAR"},  # uint32
        ],
    }
    text = json.dumps(gltf, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 4)  # chunks are 4-byte aligned: JSON padded with spaces, binary with zeros
    binary = positions + indices
    binary += b"\0" * (-len(binary) % 4)
    chunks = (
        struct.pack("<II", len(text), 0x4E4F534A)
        + text
        + struct.pack("<II", len(binary), 0x004E4942)
        + binary
    )
    Path(path).write_bytes(struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks)


# ---- the navmesh -----------------------------------------------------------------------------


def navmesh_settings(habitat_sim: ModuleType, config: RoutePlannerConfig):
    """habitat's ``NavMeshSettings`` for our agent: its radius and height, climbing steps below the
    height that blocks (``min_obstacle_height_m``); the rest habitat's defaults."""
    settings = habitat_sim.NavMeshSettings()
    settings.set_defaults()
    settings.agent_radius = config.agent_radius_m
    settings.agent_height = config.agent_height_m
    settings.agent_max_climb = config.min_obstacle_height_m
    settings.cell_height = CELL_HEIGHT_M
    return settings


def bake_navmesh(habitat_sim: ModuleType, scene: Scene, config: RoutePlannerConfig, folder: Path) -> Path:
    """Writes the scene mesh and its stage config into ``folder``, bakes the navmesh with habitat and
    saves it there; returns the ``.navmesh`` path."""
    write_glb(scene_mesh(scene, config), folder / "scene.glb")
    stage = folder / "scene.stage_config.json"
    stage.write_text(
        json.dumps({"render_asset": "scene.glb", "up": [0, 1, 0], "front": [0, 0, -1], "origin": [0, 0, 0]})
    )
    sim_cfg = habitat_sim.SimulatorConfiguration()
    sim_cfg.scene_id = str(stage)
    sim_cfg.create_renderer = False
    navmesh = folder / "scene.navmesh"
    # No sensors, so no renderer: habitat still loads the mesh from disk for the navmesh.
    with habitat_sim.Simulator(habitat_sim.Configuration(sim_cfg, [habitat_sim.AgentConfiguration()])) as sim:
        if not sim.recompute_navmesh(sim.pathfinder, navmesh_settings(habitat_sim, config)):
            raise RuntimeError(f"scene {scene.scene_id!r}: habitat-sim could not build a navmesh")
        if not sim.pathfinder.save_nav_mesh(str(navmesh)):
            raise RuntimeError(
                f"scene {scene.scene_id!r}: habitat-sim could not save the navmesh to {navmesh}"
            )
    return navmesh


def navmesh_floor(pathfinder, floor_z: float, max_step_m: float) -> Polygon | MultiPolygon:
    """The navmesh triangles within ``max_step_m`` of the floor, merged and projected on world XY
    (higher ones, on table tops or beds, are islands the agent cannot reach from the floor)."""
    vertices = from_habitat(np.array([_vec3(v) for v in pathfinder.build_navmesh_vertices()]).reshape(-1, 3))
    indices = np.asarray(pathfinder.build_navmesh_vertex_indices(), dtype=np.int64)
    triangles = vertices[indices].reshape(-1, 3, 3)  # (T, 3, 3) world
    on_floor = np.all(np.abs(triangles[:, :, 2] - floor_z) < max_step_m, axis=1)  # (T,)
    polygons = shapely.polygons(triangles[on_floor, :, :2])
    polygons = polygons[shapely.area(polygons) > 0]
    merged = shapely.union_all(polygons)
    return merged.buffer(WELD_M, join_style="mitre").buffer(-WELD_M, join_style="mitre")


class HabitatFloorPlan(FloorPlan):
    """The walkable floor and shortest paths of habitat-sim's navmesh for a scene.

    The navmesh is baked from :func:`scene_mesh` in a temporary folder and loaded into a
    ``PathFinder``. ``free`` is its floor (:func:`navmesh_floor`); :meth:`shortest_path` asks Detour;
    approach points and :meth:`~datagen.routing.builtin.FloorPlan.shortest_other_way` run on ``free``.

    Args:
        scene: a validated scene.
        config: agent settings (become the navmesh settings).
    """

    name = "habitat"

    def __init__(self, scene: Scene, config: RoutePlannerConfig = RoutePlannerConfig()):
        self._habitat_sim = import_habitat_sim()
        with tempfile.TemporaryDirectory(prefix="vlm3r-navmesh-") as folder:
            navmesh = bake_navmesh(self._habitat_sim, scene, config, Path(folder))
            self.pathfinder = self._habitat_sim.PathFinder()
            if not self.pathfinder.load_nav_mesh(str(navmesh)):
                raise RuntimeError(
                    f"scene {scene.scene_id!r}: habitat-sim could not load its navmesh {navmesh}"
                )
        self.floor_z = scene.room.floor_z
        super().__init__(
            scene, config, free=navmesh_floor(self.pathfinder, self.floor_z, config.min_obstacle_height_m)
        )

    def snap(self, point_xy: np.ndarray) -> np.ndarray | None:
        """The navmesh floor point (habitat axes, (3,)) that ``snap_point`` gives for a floor point,
        or None when that lies more than ``SNAP_TOLERANCE_M`` away or off the floor (a table top)."""
        point_xy = np.asarray(point_xy, dtype=np.float64)
        query = to_habitat([point_xy[0], point_xy[1], self.floor_z]).astype(np.float32)
        snapped = _vec3(self.pathfinder.snap_point(query))  # NaN when nothing is near
        if np.isnan(snapped).any():
            return None
        world = from_habitat(snapped)
        if (
            np.linalg.norm(world[:2] - point_xy) > SNAP_TOLERANCE_M
            or abs(world[2] - self.floor_z) >= self.config.min_obstacle_height_m
        ):
            return None
        return snapped

    def shortest_path(self, start_xy: np.ndarray, goal_xy: np.ndarray) -> np.ndarray | None:
        """Detour's shortest path as (P, 2) world XY corners from ``start_xy`` to ``goal_xy``, or None.

        Both ends are snapped to the navmesh first; the returned path starts and ends at the
        requested points (each within ``SNAP_TOLERANCE_M`` of its snapped point).
        """
        start_xy, goal_xy = np.asarray(start_xy, float), np.asarray(goal_xy, float)
        start, goal = self.snap(start_xy), self.snap(goal_xy)
        if start is None or goal is None:
            return None
        query = self._habitat_sim.ShortestPath()
        query.requested_start = start.astype(np.float32)
        query.requested_end = goal.astype(np.float32)
        if not self.pathfinder.find_path(query) or not math.isfinite(query.geodesic_distance):
            return None
        corners = from_habitat(np.array([_vec3(p) for p in query.points]))[:, :2]  # (P, 2)
        return np.concatenate([start_xy[None], corners[1:-1], goal_xy[None]])
