"""VSTI camera tasks: camera-object distance, relative distance, displacement, movement direction.

The camera centre is the translation ``t`` of the camera-to-world pose (the reference used -R^T t,
which differs whenever the camera is rotated: every camera here is).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from conftest import ROOM_OBJECTS

from datagen.scene_graph import SceneGraph
from datagen.tasks import (
    camera_displacement,
    camera_movement_direction,
    camera_obj_abs_dist,
    camera_obj_rel_dist,
)
from tests.datagen.scene_builder import box, look_at, make_scene


def _frame_number(question: str, which: int = 0) -> int:
    return int(re.findall(r"frame (\d+) of 32", question)[which])


def test_camera_object_distance_on_paper():
    # Camera at (3, -1, 1.6) looking up and to the side; the table's nearest point is its top edge
    # (3, 2.4, 0.8): sqrt(3.4^2 + 0.8^2) = 3.49 -> 3.5. Both chairs are visible, so neither is asked.
    poses = [look_at((3, -1, 1.6), (5, 3, 0.2))] * 32
    g = SceneGraph(make_scene(ROOM_OBJECTS, poses, room_size=(6.0, 5.0), visible=[[4, 5, 6]] * 32))
    assert not np.allclose(-poses[0][:3, :3].T @ poses[0][:3, 3], poses[0][:3, 3])  # the bug would matter
    items = camera_obj_abs_dist.generate(g, np.random.default_rng(0), cap=100)
    assert len(items) == 32
    for item in items:
        assert "nearest point of the table in frame" in item.question
        assert item.answer == "3.5"
        assert item.frame_indices == (_frame_number(item.question) - 1,)  # 32 frames: rank = index


def test_camera_object_distance_range():
    near = [box(1, "vase", (0, 0.2, 1.5), (0.1, 0.1, 0.1))]  # 0.15 m from the camera: under 0.2 m
    g = SceneGraph(make_scene(near, [look_at((0, 0, 1.5), (0, 5, 1.5))] * 32, visible=[[1]] * 32))
    assert camera_obj_abs_dist.generate(g, np.random.default_rng(0), cap=100) == []


def _rel_dist_graph():
    # Camera at the origin, 1 m up, looking along +y. Nearest-point distances: a 1.9, b 2.9, c 2.0,
    # d 3.9, e 0.4 (too close to be asked).
    objects = [
        box(1, "a", (0, 2.0, 1), (0.2, 0.2, 0.2)),
        box(2, "b", (0, 3.0, 1), (0.2, 0.2, 0.2)),
        box(3, "c", (2.1, 0, 1), (0.2, 0.2, 0.2)),  # beside the camera (visibility is given)
        box(4, "d", (0, 4.0, 1), (0.2, 0.2, 0.2)),
        box(5, "e", (0, 0.5, 1), (0.2, 0.2, 0.2)),
    ]
    return SceneGraph(
        make_scene(objects, [look_at((0, 0, 1), (0, 5, 1))] * 32, visible=[[1, 2, 3, 4, 5]] * 32)
    )


def test_camera_relative_distance_separates_choices_by_15_cm():
    g = _rel_dist_graph()
    assert [g.camera_distance(g.frames[0], i) for i in range(1, 6)] == pytest.approx(
        [1.9, 2.9, 2.0, 3.9, 0.4]
    )
    items = camera_obj_rel_dist.generate(g, np.random.default_rng(0), cap=100)
    by_type = {qt: [i for i in items if i.question_type == qt] for qt in camera_obj_rel_dist.VARIANTS}
    assert by_type["camera_obj_rel_dist_v1"] == []  # a, b, d are the only options 15 cm apart: 3 < 4
    assert len(by_type["camera_obj_rel_dist_v2"]) == 32  # one per frame
    assert {frozenset(i.choices) for i in by_type["camera_obj_rel_dist_v2"]} == {frozenset("abd")}
    assert {frozenset(i.choices) for i in by_type["camera_obj_rel_dist_v3"]} <= {
        frozenset("ab"),
        frozenset("ad"),
    }
    assert all(i.answer == "a" and i.choices_in_question for i in items)


def test_displacement_is_straight_line_between_camera_centres():
    # The camera walks 0.1 m along x per frame, turning to keep looking at a fixed point.
    poses = [look_at((0.1 * i, 0, 1.5), (1.5, 4, 1.0)) for i in range(32)]
    g = SceneGraph(make_scene(ROOM_OBJECTS[:1], poses, visible=[[]] * 32))
    items = camera_displacement.generate(g, np.random.default_rng(0), cap=10)
    assert len(items) == 10 and len({i.frame_indices for i in items}) == 10
    for item in items:
        i, j = _frame_number(item.question, 0) - 1, _frame_number(item.question, 1) - 1
        assert 5 <= j - i <= 30 and item.frame_indices == (i, j)
        assert item.answer == f"{round(0.1 * (j - i), 1):.1f}"


def test_movement_direction_in_the_start_camera_axes():
    g = _rel_dist_graph()
    start = g.frames[0]

    def frame_at(eye, target):
        return start.__class__(1, 1, 0.1, look_at(eye, target), start.intrinsics, ())

    facing_x = frame_at((0, 0, 1), (5, 0, 1))  # looks along +x: its right is -y, its left +y
    direction = camera_movement_direction.movement_direction
    assert direction(facing_x, frame_at((0, 2, 1), (0, 5, 1)), tau=1.0) == "Left"
    assert direction(facing_x, frame_at((0, -2, 1), (0, 5, 1)), tau=1.0) == "Right"
    assert direction(facing_x, frame_at((3, 0.5, 1), (0, 5, 1)), tau=1.0) == "Forward"
    assert direction(facing_x, frame_at((-1.5, 1.2, 1), (0, 5, 1)), tau=1.0) == "Backward"  # larger wins
    assert direction(facing_x, frame_at((0.8, 0.8, 3), (0, 5, 1)), tau=1.0) is None  # vertical ignored
    assert direction(facing_x, frame_at((0.8, 0.0, 1), (0, 5, 1)), tau=0.5) == "Forward"


def test_movement_direction_questions():
    # Frames 0-15 walk forward (+y, the viewing direction) 0.2 m each; frames 16-31 walk right (+x).
    eyes = [(0, 0.2 * i, 1.5) for i in range(16)] + [(0.2 * (i - 15), 3.0, 1.5) for i in range(16, 32)]
    poses = [look_at(e, (e[0], e[1] + 5, 1.5)) for e in eyes]
    g = SceneGraph(make_scene(ROOM_OBJECTS[:1], poses, visible=[[]] * 32))
    items = camera_movement_direction.generate(g, np.random.default_rng(0), cap=50)
    assert {i.question_type for i in items} == set(camera_movement_direction.VARIANTS)
    for item in items:
        i, j = item.frame_indices
        dx, dz = eyes[j][0] - eyes[i][0], eyes[j][1] - eyes[i][1]
        n, tau = camera_movement_direction.VARIANTS[item.question_type]
        assert len(item.choices) == n and item.answer in item.choices
        assert max(abs(dx), abs(dz)) > tau
        expected = (
            ("Forward" if dz > 0 else "Backward") if abs(dz) >= abs(dx) else ("Right" if dx > 0 else "Left")
        )
        assert item.answer == expected
