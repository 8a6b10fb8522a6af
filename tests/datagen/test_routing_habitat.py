"""The habitat-sim route planner against a stand-in ``habitat_sim`` (fake_habitat_sim.py, Y-up, the
0.3.x API surface we use): axes, the scene mesh and its glTF file, the navmesh floor, snapping, the
auto/builtin/habitat choice, and route questions equal to the built-in planner's on hand-built rooms."""

from __future__ import annotations

import dataclasses
import sys

import fake_habitat_sim
import numpy as np
import pytest

from datagen.qa import GENERATOR_VERSION, QAConfig, generate_scene_rows
from datagen.routing import make_route_planner, resolve_route_planner
from datagen.routing.builtin import FloorPlan, RoutePlannerConfig, footprint
from datagen.routing.habitat import HabitatFloorPlan, from_habitat, scene_mesh, to_habitat, write_glb
from datagen.scene_graph import SceneGraph
from datagen.tasks import route_planning as rp
from jobs.generate_qa import parse_args
from tests.datagen.scene_builder import box, look_at, make_scene, transform_scene
from vlm3r_core.scene import Room


@pytest.fixture
def habitat(monkeypatch):
    monkeypatch.setitem(sys.modules, "habitat_sim", fake_habitat_sim)
    return fake_habitat_sim


@pytest.fixture
def no_habitat(monkeypatch):
    monkeypatch.setitem(sys.modules, "habitat_sim", None)  # import habitat_sim raises ImportError


def _scene(objects, room=(6.0, 4.0)):
    return make_scene(objects, [look_at((0.5, 0.5, 1.5), (3, 2, 1))], room_size=room, visible=[[]])


# The room of tests/datagen/tasks/test_task_route_planning.py: the way from the plant to the desk
# goes round the right end of a bookshelf and a cabinet, corners (4.2, 1.8) and (4.2, 3.7).
ROUTE_ROOM = [
    box(1, "bookshelf", (2, 2.25, 1.0), (4, 0.5, 2.0)),
    box(2, "cabinet", (2, 3.0, 0.5), (4, 1.0, 1.0)),
    box(3, "plant", (0.25, 1.0, 0.5), (0.3, 0.6, 1.0)),
    box(4, "desk", (1.0, 5.5, 0.4), (1.6, 0.8, 0.8)),
    box(5, "window", (0.05, 1.0, 2.1), (0.1, 1.0, 0.8)),
]


def _normals(triangles):
    n = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def test_axes_map_z_up_to_y_up_by_a_rotation():
    np.testing.assert_array_equal(to_habitat([1.0, 2.0, 3.0]), [1.0, 3.0, -2.0])
    np.testing.assert_array_equal(to_habitat([0.0, 0.0, 1.0]), [0.0, 1.0, 0.0])  # our up is habitat's up
    np.testing.assert_array_equal(to_habitat([0.0, 1.0, 0.0]), [0.0, 0.0, -1.0])  # our +y is habitat's front
    points = np.random.default_rng(0).normal(size=(5, 3))
    np.testing.assert_allclose(from_habitat(to_habitat(points)), points)
    assert np.linalg.det(to_habitat(np.eye(3))) == pytest.approx(1.0)  # windings and left/right are kept


def test_scene_mesh_floor_walls_and_boxes_in_habitat_axes():
    table = box(1, "table", (3, 2, 0.4), (1, 0.8, 0.8), yaw_deg=30)
    lamp = box(2, "ceiling lamp", (1, 1, 2.5), (0.4, 0.4, 0.3))  # above the agent: floor stays under it
    scene = transform_scene(_scene([table, lamp]), 0.0, (0.0, 0.0, 0.3))  # floor at z = 0.3
    mesh = scene_mesh(scene)
    tri = mesh.vertices[mesh.faces].astype(np.float64)  # (F, 3, 3) habitat axes
    normals, centroids = _normals(tri), tri.mean(axis=1)
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    assert mesh.vertices.dtype == np.float32 and tri[:, :, 1].min() == pytest.approx(0.3)
    assert tri[:, :, 1].max() == pytest.approx(0.3 + 2.8)  # walls reach the room height

    floor = np.all(np.abs(tri[:, :, 1] - 0.3) < 1e-6, axis=1) & (normals[:, 1] > 0.99)  # facing up
    cut = footprint(table).area  # the table stands on the floor, the lamp does not
    assert area[floor].sum() == pytest.approx(6 * 4 - cut, abs=1e-5)

    on_wall = np.isclose(centroids[:, 0], 0) | np.isclose(centroids[:, 0], 6)
    on_wall |= np.isclose(centroids[:, 2], 0) | np.isclose(centroids[:, 2], -4)  # habitat z = -y
    room_center = np.array([3.0, 1.7, -2.0])
    assert area[on_wall].sum() == pytest.approx(2 * (6 + 4) * 2.8, abs=1e-4)
    assert np.all(np.einsum("fc,fc->f", normals[on_wall], room_center - centroids[on_wall]) > 0)  # inward

    for obj in (table, lamp):
        corners = to_habitat(obj.corners() + [0, 0, 0.3])  # (8, 3)
        mine = np.all(np.min(np.linalg.norm(tri[:, :, None] - corners, axis=-1), axis=-1) < 1e-5, axis=1)
        assert mine.sum() == 12
        assert area[mine].sum() == pytest.approx(2 * (obj.extent @ np.roll(obj.extent, 1)), abs=1e-4)
        outward = np.einsum("fc,fc->f", normals[mine], centroids[mine] - corners.mean(axis=0))
        assert np.all(outward > 0)


def test_glb_file_loads_back_with_open3d(tmp_path):
    open3d = pytest.importorskip("open3d")
    mesh = scene_mesh(_scene([box(1, "table", (3, 2, 0.4), (1, 0.8, 0.8), yaw_deg=30)]))
    write_glb(mesh, tmp_path / "scene.glb")
    loaded = open3d.io.read_triangle_mesh(str(tmp_path / "scene.glb"))
    triangles = np.asarray(loaded.vertices)[np.asarray(loaded.triangles)]  # (F, 3, 3)
    np.testing.assert_allclose(triangles, mesh.vertices[mesh.faces], atol=1e-6)


def test_navmesh_is_baked_from_the_stage_in_habitat_axes(habitat, monkeypatch):
    baked = []
    monkeypatch.setattr(habitat.Simulator, "close", lambda self, destroy=True: baked.append(self))
    scene = _scene([box(1, "table", (3, 2, 0.4), (1, 0.8, 0.8))])
    plan = HabitatFloorPlan(scene, RoutePlannerConfig(agent_radius_m=0.25))
    assert len(baked) == 1  # the simulator was closed once the navmesh was saved
    heights = {round(float(v[1]), 3) for v in plan.pathfinder.build_navmesh_vertices()}
    assert heights == {0.0, 0.8}  # the floor and the table top, an island of its own
    builtin = FloorPlan(scene, RoutePlannerConfig(agent_radius_m=0.25))
    assert plan.free.symmetric_difference(builtin.free).area < 1e-5  # the table top is left out


def test_no_walkable_floor_inside_a_box_taller_than_the_agent(habitat):
    # A closed box seen as surfaces: its top is 2 m above the floor, more than the agent height, so
    # Recast would find floor inside it if the mesh drew the floor there.
    wardrobe = box(1, "wardrobe", (3, 2, 1.0), (1.6, 1.6, 2.0))
    plan = HabitatFloorPlan(_scene([wardrobe]))
    assert not plan.free.intersects(footprint(wardrobe).buffer(-0.01))
    assert plan.shortest_path(np.array([3.0, 2.0]), np.array([0.5, 0.5])) is None


def test_snapping_keeps_points_on_the_floor(habitat):
    table = box(1, "table", (3, 2, 0.4), (2.4, 2.0, 0.8))  # its top is nearer than the floor's edge
    plan = HabitatFloorPlan(_scene([table]))
    np.testing.assert_allclose(plan.snap(np.array([1.0, 1.5])), [1.0, 0.0, -1.5], atol=1e-6)
    assert plan.snap(np.array([3.0, 2.0])) is None  # under the table: snaps to its top, 0.8 m up
    assert plan.snap(np.array([6.5, 2.0])) is None  # 0.7 m outside the room
    assert plan.snap(np.array([1.57, 2.0])) is not None  # 3 cm into the grown table: snapped back


def test_shortest_path_matches_the_builtin_one(habitat):
    # Obstacle x [2.5, 3.5], y [1.0, 3.4]; grown by 0.2 m the lower corners (2.3, 0.8), (3.7, 0.8).
    scene = _scene([box(1, "wardrobe", (3, 2.2, 0.5), (1, 2.4, 1))])
    plan = HabitatFloorPlan(scene)
    path = plan.shortest_path(np.array([1.0, 2.0]), np.array([5.0, 2.0]))
    np.testing.assert_allclose(path, [[1, 2], [2.3, 0.8], [3.7, 0.8], [5, 2]], atol=1e-5)
    assert plan.shortest_path(np.array([1.0, 2.0]), np.array([3.0, 2.0])) is None  # inside the obstacle


def test_l_shaped_room(habitat):
    outline = np.array([[0, 0], [6, 0], [6, 2], [2, 2], [2, 5], [0, 5]], float)  # 18 m^2
    scene = dataclasses.replace(_scene([]), room=Room(outline, floor_z=0.0, height=2.8, area_m2=18.0))
    mesh = scene_mesh(scene)
    tri = mesh.vertices[mesh.faces].astype(np.float64)
    up = _normals(tri)[:, 1] > 0.99
    assert 0.5 * np.linalg.norm(np.cross(tri[up, 1] - tri[up, 0], tri[up, 2] - tri[up, 0]), axis=1).sum() == (
        pytest.approx(18.0)
    )
    start, goal = np.array([5.0, 1.0]), np.array([1.0, 4.0])
    path = HabitatFloorPlan(scene).shortest_path(start, goal)
    np.testing.assert_allclose(path, [[5, 1], [1.8, 1.8], [1, 4]], atol=1e-5)  # round the inner corner (2, 2)
    np.testing.assert_allclose(path, FloorPlan(scene).shortest_path(start, goal), atol=1e-5)


def test_route_questions_match_the_builtin_planner(habitat):
    g = SceneGraph(_scene(ROUTE_ROOM, room=(6.0, 6.0)))
    plan = make_route_planner(g.scene, "habitat")
    np.testing.assert_allclose(
        rp.plan_route(g, plan, "plant", "desk"), [[0.6, 1.0], [4.2, 1.8], [4.2, 3.7], [1.0, 4.9]], atol=1e-5
    )
    items = rp.generate(g, np.random.default_rng(0), cap=20, planner="habitat")
    assert items and items == rp.generate(g, np.random.default_rng(0), cap=20, planner="builtin")
    moved = SceneGraph(transform_scene(g.scene, -120.0, (-5.0, 7.5, 0.4)))  # turned, shifted, floor raised
    assert rp.generate(moved, np.random.default_rng(1), cap=20, planner="habitat") == rp.generate(
        moved, np.random.default_rng(1), cap=20, planner="builtin"
    )


@pytest.mark.parametrize(
    ("table_y", "table_depth", "expected"),
    [
        (1.8, 1.0, None),  # centred between plant and desk: above and below are equally long
        (1.2, 1.4, [[0.6, 1.8], [2.3, 2.1], [3.7, 2.1], [5.0, 1.8]]),  # above 4.46 m, below 5.65 m
    ],
)
def test_near_equal_way_round_is_rejected_with_habitat(habitat, table_y, table_depth, expected):
    objects = [
        box(1, "plant", (0.25, 1.8, 0.5), (0.3, 0.6, 1.0)),
        box(2, "desk", (5.6, 1.8, 0.4), (0.8, 1.6, 0.8)),
        box(3, "table", (3, table_y, 0.4), (1, table_depth, 0.8)),
    ]
    scene = _scene(objects)
    path = rp.plan_route(SceneGraph(scene), HabitatFloorPlan(scene), "plant", "desk")
    if expected is None:
        assert path is None
    else:
        np.testing.assert_allclose(path, expected, atol=1e-5)


def test_auto_uses_habitat_when_it_imports(habitat):
    scene = _scene([box(1, "table", (3, 2, 0.4), (1, 0.8, 0.8))])
    assert resolve_route_planner("auto") == "habitat"
    assert make_route_planner(scene, "auto").name == "habitat"
    assert type(make_route_planner(scene, "builtin")) is FloorPlan
    qa = parse_args(["--scenes", "s", "--out", "o"]).qa
    assert qa.route_planner == "habitat"
    builtin = parse_args(["--scenes", "s", "--out", "o", "--route-planner", "builtin"]).qa
    assert builtin.route_planner == "builtin" and builtin.fingerprint() != qa.fingerprint()


def test_without_habitat_auto_is_builtin_and_habitat_is_an_error(no_habitat):
    assert resolve_route_planner("auto") == "builtin" and QAConfig().route_planner == "builtin"
    assert parse_args(["--scenes", "s", "--out", "o"]).qa.route_planner == "builtin"
    with pytest.raises(ImportError, match="conda install habitat-sim"):
        resolve_route_planner("habitat")
    with pytest.raises(ValueError, match="--route-planner builtin"):  # the CLI's one-line usage error
        parse_args(["--scenes", "s", "--out", "o", "--route-planner", "habitat"])
    with pytest.raises(ImportError, match="habitat_sim"):
        HabitatFloorPlan(_scene([]))
    with pytest.raises(ValueError, match="route planner must be one of"):
        QAConfig(route_planner="recast")
    with pytest.raises(ValueError, match="invalid choice: 'recast'"):
        parse_args(["--scenes", "s", "--out", "o", "--route-planner", "recast"])


def test_rows_record_the_planner(habitat):
    scene = _scene(ROUTE_ROOM, room=(6.0, 6.0))
    tasks = ("route_planning", "room_size_estimation")
    rows = {
        p: generate_scene_rows(scene, "v.mp4", QAConfig(tasks=tasks, route_planner=p))
        for p in ("habitat", "builtin")
    }
    route = [r for r in rows["habitat"] if r["question_type"] == "route_planning"]
    assert route and {r["generator_version"] for r in route} == {f"{GENERATOR_VERSION}+habitat"}
    assert {r["generator_version"] for r in rows["builtin"] if r["question_type"] == "route_planning"} == {
        f"{GENERATOR_VERSION}+builtin"
    }
    assert {r["generator_version"] for r in rows["habitat"] if r["question_type"] != "route_planning"} == {
        GENERATOR_VERSION
    }
    strip = [{k: v for k, v in r.items() if k != "generator_version"} for r in rows["habitat"]]
    assert strip == [{k: v for k, v in r.items() if k != "generator_version"} for r in rows["builtin"]]
