"""Scene graph: exact box distances, camera centre, frame sampling, unique categories, first appearance."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scipy.optimize import lsq_linear

from datagen.scene_graph import SceneGraph, obb_distance, point_box_distance
from tests.datagen.scene_builder import box, look_at, make_scene, yaw_rotation

I3 = np.eye(3)


def _scene(objects, num_frames=4, visible=None):
    poses = [look_at((3, -2.0 + 0.01 * i, 1.5), (3, 2.5, 0.5)) for i in range(num_frames)]
    return make_scene(objects, poses, visible=visible)


def test_box_distance_on_paper():
    # bed x [0, 2], y [0.2, 1.8]; sofa x [3.5, 5.5]; table x [2.5, 3.5], y [2.4, 3.2]
    bed = box(1, "bed", (1, 1, 0.3), (2, 1.6, 0.6))
    sofa = box(2, "sofa", (4.5, 1, 0.4), (2, 1, 0.8))
    table = box(3, "table", (3, 2.8, 0.4), (1, 0.8, 0.8))
    lamp = box(4, "lamp", (3, 2.8, 1.0), (0.2, 0.2, 0.4))  # stands on the table: touches it
    shelf = box(5, "shelf", (1, 1, 1.0), (0.4, 0.4, 0.4), yaw_deg=45)  # above the bed: z 0.8..1.2 over 0..0.6
    g = SceneGraph(_scene([bed, sofa, table, lamp, shelf]))
    assert g.box_distance(1, 2) == pytest.approx(1.5)
    assert g.box_distance(1, 3) == pytest.approx(math.sqrt(0.5**2 + 0.6**2))
    assert g.box_distance(3, 4) == 0.0
    assert g.box_distance(1, 5) == pytest.approx(0.2)  # shelf bottom at z 0.8, bed top at 0.6
    assert g.category_distance("bed", "table") == g.box_distance(3, 1)


def test_edge_edge_distance_is_exact():
    # Unit cubes 2 m apart vertically. B rotated 45 degrees about X: its lowest edge runs along x at
    # height 2 - sqrt(2)/2, above A's top face (z = 0.5).
    a_center, b_center = np.zeros(3), np.array([0.0, 0.0, 2.0])
    c, s = np.cos(np.pi / 4), np.sin(np.pi / 4)
    rot_x = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    rot_z = yaw_rotation(90)
    expected = 2 - math.sqrt(2) / 2 - 0.5
    assert obb_distance(a_center, np.ones(3), I3, b_center, np.ones(3), rot_x) == pytest.approx(expected)
    # Edge against edge: A rotated 45 degrees about Y has a ridge along y at height sqrt(2)/2; B's
    # lowest edge (along x) crosses it above x = y = 0, so the closest points are inside both edges.
    rot_y = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    expected = 2 - 2 * math.sqrt(2) / 2
    assert obb_distance(a_center, np.ones(3), rot_y, b_center, np.ones(3), rot_x) == pytest.approx(expected)
    assert obb_distance(a_center, np.ones(3), rot_y, b_center, np.ones(3), rot_z @ rot_x) == pytest.approx(
        expected
    )


def _rotation(q):
    w, x, y, z = np.asarray(q) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _numeric_distance(c_a, e_a, r_a, c_b, e_b, r_b):
    """Independent check: the closest pair solves a bounded least-squares problem in the boxes' local
    coordinates, min |(c_a + r_a u) - (c_b + r_b v)| with |u| <= e_a / 2, |v| <= e_b / 2 (convex;
    scipy's bounded-variable least squares solves it exactly)."""
    half = np.concatenate([e_a, e_b]) / 2
    fit = lsq_linear(np.hstack([r_a, -r_b]), c_b - c_a, bounds=(-half, half), method="bvls", tol=1e-12)
    return math.sqrt(2 * fit.cost)


coords = st.floats(-2.5, 2.5)
quaternion = st.tuples(*[st.floats(-1, 1)] * 4).filter(lambda q: np.linalg.norm(q) > 0.1)
extents = st.tuples(*[st.floats(0.05, 2.0)] * 3)


@settings(max_examples=300, deadline=None)
@example(  # L-BFGS-B stopped 2 cm short of the minimum here; the exact distance was right
    (0.0, 2.375, 1.5),
    (1.5, 0.6875, 1.0),
    (0.0, 1.0, 0.0, 0.03125),
    (0.0, 0.0, 1.0),
    (1.75, 1.0, 0.75),
    (0.71875, 0.0, 0.56640625, -0.8125),
)
@given(
    st.tuples(coords, coords, coords),
    extents,
    quaternion,
    st.tuples(coords, coords, coords),
    extents,
    quaternion,
)
def test_box_distance_matches_numeric_minimum(c_a, e_a, q_a, c_b, e_b, q_b):
    args = (np.array(c_a), np.array(e_a), _rotation(q_a), np.array(c_b), np.array(e_b), _rotation(q_b))
    exact = obb_distance(*args)
    assert exact >= 0
    assert exact == pytest.approx(_numeric_distance(*args), abs=1e-9)
    assert obb_distance(*args[3:], *args[:3]) == pytest.approx(exact, abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(
    st.tuples(coords, coords, coords),
    extents,
    st.floats(0, 360),
    st.tuples(coords, coords, coords),
    extents,
    st.floats(0, 360),
    st.floats(0, 360),
    st.tuples(coords, coords, coords),
)
def test_box_distance_invariant_to_rotation_about_z_and_translation(
    c_a, e_a, yaw_a, c_b, e_b, yaw_b, yaw, shift
):
    rot, t = yaw_rotation(yaw), np.array(shift)
    r_a, r_b = yaw_rotation(yaw_a), yaw_rotation(yaw_b)
    before = obb_distance(np.array(c_a), np.array(e_a), r_a, np.array(c_b), np.array(e_b), r_b)
    after = obb_distance(rot @ c_a + t, np.array(e_a), rot @ r_a, rot @ c_b + t, np.array(e_b), rot @ r_b)
    assert after == pytest.approx(before, abs=1e-9)


def test_point_box_distance():
    center, extent, rotation = (
        np.array([1.0, 1.0, 0.5]),
        np.array([2.0, 1.0, 1.0]),
        yaw_rotation(90),
    )  # x [0.5, 1.5], y [0, 2]
    points = np.array([[1.0, 1.0, 0.5], [3.5, 1.0, 0.5], [2.5, 3.0, 0.5], [1.0, 1.0, 2.0]])
    np.testing.assert_allclose(
        point_box_distance(points, center, extent, rotation), [0.0, 2.0, math.sqrt(2), 1.0]
    )


def test_camera_centre_is_the_pose_translation():
    table = box(1, "table", (3, 2.8, 0.4), (1, 0.8, 0.8))  # x [2.5, 3.5], y [2.4, 3.2], z [0, 0.8]
    pose = look_at((3, -1.0, 1.6), (4, 3, 0.2))  # rotated camera: -R^T t differs from t
    g = SceneGraph(make_scene([table], [pose], visible=[[1]]))
    frame = g.frames[0]
    np.testing.assert_allclose(frame.camera_center, [3, -1.0, 1.6])
    assert g.camera_distance(frame, 1) == pytest.approx(math.hypot(3.4, 0.8))  # to the top edge y=2.4, z=0.8
    # The camera looks along +z in its own frame: the target lies on the optical axis.
    cam = frame.world_to_camera(np.array([[4.0, 3.0, 0.2]]))[0]
    assert cam[0] == pytest.approx(0) and cam[1] == pytest.approx(0) and cam[2] > 0


def test_frames_follow_the_one_sampling_rule():
    objects = [box(1, "bed", (1, 1, 0.3), (2, 1.6, 0.6))]
    scene = _scene(objects, num_frames=100, visible=[[1]] * 100)
    g = SceneGraph(scene, num_samples=32)
    expected = np.linspace(0, 99, 32, dtype=int)
    assert [f.index for f in g.frames] == expected.tolist()
    assert [f.rank for f in g.frames] == list(range(32))
    assert g.frame_description(g.frames[4]) == "frame 5 of 32"
    assert g.timestamps == pytest.approx((expected / scene.video.fps).tolist())
    assert g.duration_s == pytest.approx(100 / scene.video.fps)
    # A source without a pose for every frame: sampled frames it lacks get no node, ranks stay.
    sparse = SceneGraph(dataclasses.replace(scene, frames=scene.frames[::2]), num_samples=32)
    assert [f.index for f in sparse.frames] == [i for i in expected.tolist() if i % 2 == 0]
    assert [f.rank for f in sparse.frames] == [r for r, i in enumerate(expected.tolist()) if i % 2 == 0]


def test_unique_categories_frame_unique_and_first_appearance():
    objects = [
        box(1, "bed", (1, 1, 0.3), (2, 1.6, 0.6)),
        box(2, "chair", (1, 3.5, 0.45), (0.5, 0.5, 0.9)),
        box(3, "chair", (5, 3.5, 0.45), (0.5, 0.5, 0.9)),
        box(4, "tv", (3, 4.5, 1.0), (1.2, 0.2, 0.7)),
    ]
    visible = [[], [1], [1, 2], [2, 3, 4]]
    g = SceneGraph(_scene(objects, visible=visible), num_samples=4)
    assert g.unique_categories() == ["bed", "tv"]
    assert g.category_counts["chair"] == 2
    assert {c: n.instance_id for c, n in g.frame_unique_instances(g.frames[2]).items()} == {
        "bed": 1,
        "chair": 2,
    }
    assert {c: n.instance_id for c, n in g.frame_unique_instances(g.frames[3]).items()} == {"tv": 4}
    assert {c: f.rank for c, f in g.first_appearances().items()} == {"bed": 1, "chair": 2, "tv": 3}
    with pytest.raises(ValueError, match="chair"):
        g.unique_instance("chair")
