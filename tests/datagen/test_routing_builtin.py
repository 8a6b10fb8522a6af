"""Route planning: walkable floor, exact shortest paths, which objects block, turn signs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from datagen.routing.builtin import FloorPlan, RoutePlannerConfig, path_length, signed_turn_deg, simplify_path
from tests.datagen.scene_builder import box, look_at, make_scene


def _plan(objects, room=(6.0, 4.0)):
    scene = make_scene(objects, [look_at((0.5, 0.5, 1.5), (3, 2, 1))], room_size=room, visible=[[]])
    return FloorPlan(scene, RoutePlannerConfig(agent_radius_m=0.2))


def test_shortest_path_goes_around_an_obstacle_on_the_shorter_side():
    # Obstacle x [2.5, 3.5], y [1.0, 3.4]; grown by 0.2 m: x [2.3, 3.7], y [0.8, 3.6]. The room shrunk
    # by 0.2 m leaves corridors y [0.2, 0.8] below and y [3.6, 3.8] above; from y = 2 the lower
    # corners are nearer, so the path takes them.
    plan = _plan([box(1, "wardrobe", (3, 2.2, 0.5), (1, 2.4, 1))])
    path = plan.shortest_path(np.array([1.0, 2.0]), np.array([5.0, 2.0]))
    np.testing.assert_allclose(path, [[1, 2], [2.3, 0.8], [3.7, 0.8], [5, 2]], atol=1e-9)
    assert path_length(path) == pytest.approx(2 * math.hypot(1.3, 1.2) + 1.4)


def test_low_and_high_objects_do_not_block():
    rug = box(1, "rug", (3, 2, 0.01), (1, 3.6, 0.02))  # below 0.1 m
    lamp = box(2, "ceiling lamp", (3, 2, 2.3), (0.5, 3.6, 0.4))  # above the agent height
    plan = _plan([rug, lamp])
    np.testing.assert_allclose(
        plan.shortest_path(np.array([1.0, 2.0]), np.array([5.0, 2.0])), [[1, 2], [5, 2]]
    )


def test_unreachable_goal_and_off_floor_points_give_none():
    wall = box(1, "bookshelf", (3, 2, 1), (0.4, 4.0, 2))  # spans the whole room depth
    plan = _plan([wall])
    assert plan.shortest_path(np.array([1.0, 2.0]), np.array([5.0, 2.0])) is None
    assert plan.shortest_path(np.array([1.0, 2.0]), np.array([3.0, 2.0])) is None  # inside the obstacle
    assert plan.shortest_path(np.array([-1.0, 2.0]), np.array([1.0, 1.0])) is None  # outside the room


def test_approach_point_is_beside_the_middle_of_the_nearest_side():
    plan = _plan([box(1, "plant", (0.25, 2.0, 0.5), (0.3, 0.6, 1.0))])  # against the left wall
    point, gap = plan.approach_point(1, toward_xy=np.array([5.0, 0.5]))
    np.testing.assert_allclose(point, [0.6, 2.0], atol=1e-9)
    assert gap == pytest.approx(0.2)


def test_approach_point_of_an_object_in_the_open_is_on_the_side_towards_the_other_end():
    # A bench x [2, 4], y [1.8, 2.2] in the open: both long sides (y = 1.6 and y = 2.4) are 0.4 m
    # from its centre.
    plan = _plan([box(1, "bench", (3, 2, 0.3), (2, 0.4, 0.6))])
    np.testing.assert_allclose(plan.approach_point(1, toward_xy=np.array([3.0, 3.8]))[0], [3, 2.4], atol=1e-9)
    np.testing.assert_allclose(plan.approach_point(1, toward_xy=np.array([2.0, 0.3]))[0], [3, 1.6], atol=1e-9)
    assert plan.approach_point(1, toward_xy=np.array([0.5, 2.0])) is None  # both sides equally near


def test_turn_sign_and_simplification():
    assert signed_turn_deg(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(
        90
    )  # left = counter-clockwise
    assert signed_turn_deg(np.array([1.0, 0.0]), np.array([0.0, -1.0])) == pytest.approx(-90)
    assert abs(signed_turn_deg(np.array([1.0, 0.0]), np.array([-1.0, 0.0]))) == pytest.approx(180)
    wiggly = np.array([[0, 0], [1, 0.02], [2, 0], [2, 1]], float)
    np.testing.assert_allclose(simplify_path(wiggly), [[0, 0], [2, 0], [2, 1]])


def test_config_is_validated():
    with pytest.raises(ValueError, match="agent_radius_m"):
        RoutePlannerConfig(agent_radius_m=0)
    with pytest.raises(ValueError, match="agent_height_m"):
        RoutePlannerConfig(agent_height_m=0.05)


def test_shortest_other_way_passes_a_free_standing_obstacle_on_the_other_side():
    # A table in the open, grown by 0.2 m: x [2.3, 3.7], y [1.3, 2.7]. From (1, 2) to (5, 2) the way
    # above and the way below are equally long.
    centred = _plan([box(1, "table", (3, 2, 0.4), (1, 1, 0.8))])
    path = centred.shortest_path(np.array([1.0, 2.0]), np.array([5.0, 2.0]))
    assert centred.shortest_other_way(path) == pytest.approx(path_length(path))
    # Table moved down, grown y [0.3, 2.1]: from (1, 1.8) to (5, 1.8) the way above takes the corners
    # (2.3, 2.1) and (3.7, 2.1); the other way goes below, through (2.3, 0.3) and (3.7, 0.3).
    low = _plan([box(1, "table", (3, 1.2, 0.4), (1, 1.4, 0.8))])
    path = low.shortest_path(np.array([1.0, 1.8]), np.array([5.0, 1.8]))
    np.testing.assert_allclose(path, [[1, 1.8], [2.3, 2.1], [3.7, 2.1], [5, 1.8]], atol=1e-9)
    assert low.shortest_other_way(path) == pytest.approx(2 * math.hypot(1.3, 1.5) + 1.4)
    # An obstacle against a wall (y [0, 2.8]) is no island: there is no other way round.
    walled = _plan([box(1, "wardrobe", (3, 1.4, 0.5), (1, 2.8, 1))])
    assert (
        walled.shortest_other_way(walled.shortest_path(np.array([1.0, 1.8]), np.array([5.0, 1.8])))
        == math.inf
    )
