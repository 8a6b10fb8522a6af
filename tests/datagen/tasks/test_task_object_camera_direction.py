"""object_camera_direction / object_camera_clock: angles worked out on paper, edge margins, mirror symmetry."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.scene_graph import SceneGraph
from datagen.tasks import object_camera_direction as cd
from tests.datagen.scene_builder import box, look_at, make_scene

DIRECTION, CLOCK = cd.DIRECTION, cd.CLOCK
CAMERA = (3.0, 1.0, 1.5)  # looking along +y: ahead is +y, right is +x; phi = atan2(dx, dy) clockwise


def _at(instance_id, category, phi_deg, radius=2.0, size=0.2, z=0.5):
    """A small box at clockwise angle ``phi_deg`` from ahead, ``radius`` m from the camera."""
    a = math.radians(phi_deg)
    return box(
        instance_id,
        category,
        (CAMERA[0] + radius * math.sin(a), CAMERA[1] + radius * math.cos(a), z),
        (size,) * 3,
    )


OBJECTS = [
    _at(1, "tv", 0, radius=3.0),  # front; 12 o'clock
    _at(2, "sofa", 45),  # front-right (its centre); exactly on the 1/2 o'clock edge: no clock question
    _at(3, "bed", 270),  # left; 9 o'clock
    _at(4, "lamp", 180),  # back; 6 o'clock
    _at(5, "plant", 125),  # back-right (12.5 deg inside); 4 o'clock (10 deg inside)
    _at(6, "desk", 18),  # 4.5 deg from the front/front-right edge and 3 deg from the 12/1 edge: neither
    box(7, "table", (3, 2.0, 0.4), (4, 0.6, 0.8)),  # centre ahead, but its ends reach left and right
    box(8, "chair", (3.2, 1.2, 0.4), (0.3, 0.3, 0.8)),  # 0.28 m from the camera: too close
]
EXPECTED = {
    "tv": ("front", "12 o'clock"),
    "sofa": ("front-right", None),
    "bed": ("left", "9 o'clock"),
    "lamp": ("back", "6 o'clock"),
    "plant": ("back-right", "4 o'clock"),
    "desk": (None, None),
    "table": (None, None),
    "chair": (None, None),
}


def _graph(pose=None):
    pose = look_at(CAMERA, (3.0, 5.0, 1.5)) if pose is None else pose
    return SceneGraph(make_scene(OBJECTS, [pose] * 32, visible=[[]] * 32))


def test_labels_on_paper():
    g = _graph()
    frame = g.frames[0]
    got = {
        n.category: (cd.direction_label(DIRECTION, frame, n), cd.direction_label(CLOCK, frame, n))
        for n in g.instances.values()
    }
    assert got == EXPECTED


def test_a_camera_looking_steeply_down_is_not_asked():
    g = _graph(look_at(CAMERA, (3.0, 1.5, 0.0)))  # 72 degrees below the horizon
    assert all(
        cd.direction_label(qt, g.frames[0], n) is None
        for qt in (DIRECTION, CLOCK)
        for n in g.instances.values()
    )


def test_questions_have_four_options_and_paper_answers():
    items = cd.generate(_graph(), np.random.default_rng(0), cap=1000)
    for qt, k in ((DIRECTION, 0), (CLOCK, 1)):
        asked = [i for i in items if i.question_type == qt]
        answerable = sum(v[k] is not None for v in EXPECTED.values())
        assert len(asked) == 32 * answerable  # every (frame, object) the rule can answer, once
        for item in asked:
            name = re.search(r"is the (\w+)(?: from the camera|, seen from above)", item.question).group(1)
            assert item.answer == EXPECTED[name][k]
            assert len(item.choices) == 4 and len(set(item.choices)) == 4
            assert set(item.choices) <= set(cd.LABELS[qt])
    clock = next(i for i in items if i.question_type == CLOCK)
    assert clock.question.startswith("In frame ") and "if the camera faces 12 o'clock" in clock.question


@pytest.mark.parametrize(
    ("phi", "direction", "clock"), [(0, 0, 0), (44, 1, 1), (46, 1, 2), (359, 0, 0), (200, 4, 7)]
)
def test_sector_numbers(phi, direction, clock):
    assert cd.sector(DIRECTION, phi) == direction and cd.sector(CLOCK, phi) == clock


MIRROR = {
    DIRECTION: {"front-right": "front-left", "right": "left", "back-right": "back-left"},
    CLOCK: {f"{h} o'clock": f"{12 - h} o'clock" for h in range(1, 6)},
}


@settings(max_examples=60, deadline=None)
@given(st.floats(-4, 4), st.floats(-4, 4), st.floats(0.05, 1.0), st.floats(-0.8, 0.8))
def test_mirroring_the_object_across_the_viewing_axis_swaps_left_and_right(dx, dy, size, pitch):
    # The camera looks along +y (pitched up or down); the mirror of x = 3 + dx is x = 3 - dx.
    pose = look_at(CAMERA, (3.0, 5.0, 1.5 + 4.0 * pitch))
    objects = [
        box(1, "a", (3 + dx, 1 + dy, 0.5), (size,) * 3),
        box(2, "b", (3 - dx, 1 + dy, 0.5), (size,) * 3),
    ]
    g = SceneGraph(make_scene(objects, [pose], visible=[[]]))
    frame = g.frames[0]
    for qt in (DIRECTION, CLOCK):
        a, b = (cd.direction_label(qt, frame, g.instances[i]) for i in (1, 2))
        swap = {**MIRROR[qt], **{v: k for k, v in MIRROR[qt].items()}}
        assert b == swap.get(a, a)
