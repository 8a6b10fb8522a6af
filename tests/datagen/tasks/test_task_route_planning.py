"""route_planning and route_planning_one_turn: routes worked out on paper, rejection bands, options,
rotation invariance."""

from __future__ import annotations

import re

import numpy as np
import pytest

from datagen.routing.builtin import FloorPlan
from datagen.scene_graph import SceneGraph
from datagen.tasks import route_planning as rp
from datagen.tasks import route_planning_one_turn
from tests.datagen.scene_builder import box, look_at, make_scene, transform_scene

# Room 6 x 6. A bookshelf (y [2.0, 2.5]) and a cabinet behind it (y [2.5, 3.5]) run from the left
# wall to x = 4, so the way from the plant (bottom left) to the desk (top left) goes around their
# right end. Grown by the 0.2 m agent radius their corners are (4.2, 1.8) and (4.2, 3.7).
# The plant's free side is its right side (x = 0.6); the desk's its bottom (y = 4.9).
# The window hangs above 1.7 m, so it does not block.
OBJECTS = [
    box(1, "bookshelf", (2, 2.25, 1.0), (4, 0.5, 2.0)),
    box(2, "cabinet", (2, 3.0, 0.5), (4, 1.0, 1.0)),
    box(3, "plant", (0.25, 1.0, 0.5), (0.3, 0.6, 1.0)),
    box(4, "desk", (1.0, 5.5, 0.4), (1.6, 0.8, 0.8)),
    box(5, "window", (0.05, 1.0, 2.1), (0.1, 1.0, 0.8)),
]


def _scene(objects=OBJECTS):
    return make_scene(objects, [look_at((5, 5, 1.5), (1, 1, 0.5))], room_size=(6.0, 6.0), visible=[[]])


def test_route_on_paper():
    g = SceneGraph(_scene())
    plan = FloorPlan(g.scene)
    path = rp.plan_route(g, plan, "plant", "desk")
    np.testing.assert_allclose(path, [[0.6, 1.0], [4.2, 1.8], [4.2, 3.7], [1.0, 4.9]], atol=1e-9)
    route = rp.describe_route(g, plan, "plant", "window", "desk", path)
    # Facing the window (180 deg), the first leg heads 12.5 deg: a 167.5 deg turn -> Turn Back.
    # At (4.2, 1.8) the heading goes to 90 deg (+77.5, left) by the bookshelf (0.28 m; cabinet 0.73 m).
    # At (4.2, 3.7) it goes to 159.4 deg (+69.4, left) by the cabinet.
    assert route.turns == ("Turn Back", "Turn Left", "Turn Left")
    assert route.actions == (
        "1. [please fill in] 2. Go forward until the bookshelf. 3. [please fill in] 4. Go forward until the cabinet. "
        "5. [please fill in] 6. Go forward until the desk. You have reached the final destination."
    )
    # Facing the cabinet's centre (55 deg): the first leg is 42.5 deg to the right -> Turn Right.
    assert rp.describe_route(g, plan, "plant", "cabinet", "desk", path).turns == (
        "Turn Right",
        "Turn Left",
        "Turn Left",
    )
    # Facing the bookshelf's centre (41.8 deg): 29.3 deg off, inside the 20-40 deg rejection band.
    assert rp.describe_route(g, plan, "plant", "bookshelf", "desk", path) is None
    # The way back mirrors it: right, right at the same corners.
    back = rp.describe_route(g, plan, "desk", "window", "plant", rp.plan_route(g, plan, "desk", "plant"))
    assert back.turns[1:] == ("Turn Right", "Turn Right")


@pytest.mark.parametrize(
    ("angle", "initial", "expected"),
    [
        (10, True, ""),
        (30, True, None),
        (-90, True, "Turn Right"),
        (150, True, None),
        (-170, True, "Turn Back"),
        (30, False, ""),
        (60, False, "Turn Left"),
        (150, False, None),
    ],
)
def test_turn_bands(angle, initial, expected):
    assert rp.classify_turn(angle, initial=initial) == expected


def test_questions_have_four_distinct_options():
    g = SceneGraph(_scene())
    items = rp.generate(g, np.random.default_rng(0), cap=20)
    assert items, "the paper route must be found"
    for item in items:
        assert len(item.choices) == 4 and len(set(item.choices)) == 4 and item.answer in item.choices
        n = item.question.count("[please fill in]") - 1  # the template's note mentions it once
        assert all(len(c.split(", ")) == n for c in item.choices) and 2 <= n <= 4
        assert all("Turn Back" not in c.split(", ")[1:] for c in item.choices)
    plant_to_desk = [
        i for i in items if "beginning at the plant" in i.question and "navigate to the desk" in i.question
    ]
    assert all(i.answer.endswith("Turn Left, Turn Left") for i in plant_to_desk)


@pytest.mark.parametrize(("yaw", "shift"), [(33.0, (2.0, -1.0, 0.0)), (-120.0, (-5.0, 7.5, 0.4))])
def test_routes_survive_rotation_about_z_and_translation(yaw, shift):
    g = SceneGraph(_scene())
    moved = SceneGraph(transform_scene(_scene(), yaw, shift))
    assert rp.generate(moved, np.random.default_rng(1), cap=20) == rp.generate(
        g, np.random.default_rng(1), cap=20
    )


@pytest.mark.parametrize(
    ("table_y", "table_depth", "expected"),
    [
        (1.8, 1.0, None),  # centred between plant and desk: above and below are equally long
        (1.2, 1.4, [[0.6, 1.8], [2.3, 2.1], [3.7, 2.1], [5.0, 1.8]]),  # above 4.46 m, below 5.65 m (+27 %)
    ],
)
def test_routes_with_a_near_equal_way_round_are_not_asked(table_y, table_depth, expected):
    # Plant against the left wall, desk against the right one, a table in the open between them.
    objects = [
        box(1, "plant", (0.25, 1.8, 0.5), (0.3, 0.6, 1.0)),
        box(2, "desk", (5.6, 1.8, 0.4), (0.8, 1.6, 0.8)),
        box(3, "table", (3, table_y, 0.4), (1, table_depth, 0.8)),
    ]
    scene = make_scene(objects, [look_at((5, 3.5, 1.5), (1, 1, 0.5))], room_size=(6.0, 4.0), visible=[[]])
    path = rp.plan_route(SceneGraph(scene), FloorPlan(scene), "plant", "desk")
    if expected is None:
        assert path is None
    else:
        np.testing.assert_allclose(path, expected, atol=1e-9)


# One-turn routes in the same room (headings counter-clockwise from +x, turn = leg - facing):
# - bookshelf -> plant: from (2.0, 1.8) straight to (0.6, 1.0), leg 209.7 deg. Facing the cabinet (90 deg):
#   +119.7 -> Turn Left; the desk (105.1 deg): +104.6 -> Turn Left; the window (202.3 deg): 7.4, no turn.
# - cabinet -> desk: (2.0, 3.7) to (1.0, 4.9), leg 129.8. The plant (237.1): -107.3 -> Turn Right; the
#   window (234.2): -104.4 -> Turn Right; the bookshelf (270): -140.2, past the 140 degree band.
# - desk -> cabinet: (1.0, 4.9) to (2.0, 3.7), leg 309.8. The plant (259.1): +50.7 -> Turn Left; the window
#   (256.3): +53.5 -> Turn Left; the bookshelf (290.7): 19.1, no turn.
# - plant -> bookshelf: (0.6, 1.0) to (2.0, 1.8), leg 29.7. The desk (84.9): -55.2 -> Turn Right; the
#   cabinet (55.0): -25.3, in the 20-40 band; the window (180): -150.3, in the 140-160 band.
ONE_TURN = {
    ("bookshelf", "cabinet", "plant"): "Turn Left",
    ("bookshelf", "desk", "plant"): "Turn Left",
    ("cabinet", "plant", "desk"): "Turn Right",
    ("cabinet", "window", "desk"): "Turn Right",
    ("desk", "plant", "cabinet"): "Turn Left",
    ("desk", "window", "cabinet"): "Turn Left",
    ("plant", "desk", "bookshelf"): "Turn Right",
}
_ROLES = r"beginning at the (\w+) facing the (\w+)\. You want to navigate to the (\w+)\."


def test_one_turn_routes_on_paper_are_the_ones_the_benchmark_task_leaves_out():
    g = SceneGraph(_scene())
    items = route_planning_one_turn.generate(g, np.random.default_rng(0), cap=100)
    got = {re.search(_ROLES, i.question).groups(): i.answer for i in items}
    assert got == ONE_TURN  # every (start, destination) with up to 2 facings
    for item in items:
        assert item.question.count("[please fill in]") == 2  # the note, and the one fill-in
        assert item.question.split(": 1. ")[1].startswith("[please fill in] 2. Go forward until the ")
        assert set(item.choices) == {"Turn Left", "Turn Right", "Turn Back"}  # re-orienting: Back allowed
    official = rp.generate(g, np.random.default_rng(0), cap=100)
    assert official and not {re.search(_ROLES, i.question).groups() for i in official} & set(ONE_TURN)
    assert len(route_planning_one_turn.generate(g, np.random.default_rng(0), cap=3)) == 3


def test_a_one_turn_route_that_does_not_reorient_has_two_options():
    # A path given on paper: east along y = 1.8, then north at x = 4.2. Facing the bookshelf's centre
    # (2, 2.25) from (0.6, 1.8) is atan2(0.45, 1.4) = 17.8 deg off the first leg: no turn. The corner
    # (4.2, 1.8) is 0.28 m from the bookshelf and 0.73 m from the cabinet: "until the bookshelf", then +90.
    path = np.array([[0.6, 1.8], [4.2, 1.8], [4.2, 4.5]])
    g = SceneGraph(_scene())
    plan = FloorPlan(g.scene)
    route = rp.describe_route(g, plan, "plant", "bookshelf", "desk", path, fill_ins=(1, 1))
    assert route.turns == ("Turn Left",) and not route.reorients
    assert route.actions == (
        "1. Go forward until the bookshelf. 2. [please fill in] 3. Go forward until the desk. "
        "You have reached the final destination."
    )
    assert rp.other_turn_sequences(route) == ["Turn Right"]  # two options
    assert rp.describe_route(g, plan, "plant", "bookshelf", "desk", path) is None  # the benchmark wants 2-4
    back = rp.Route("window", "plant", "desk", path, "", ("Turn Back",), reorients=True)
    assert rp.other_turn_sequences(back) == ["Turn Left", "Turn Right"]
