"""perspective_taking (left/right, front/behind): angles worked out on paper, axis margins, role swaps."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.scene_graph import SceneGraph
from datagen.tasks import perspective_taking as pt
from tests.datagen.scene_builder import box, look_at, make_scene

LR, FB = pt.LEFT_RIGHT, pt.FRONT_BEHIND


def _around_bed(instance_id, category, angle_deg, radius=2.0):
    """A 0.2 m cube at ``angle_deg`` counter-clockwise from +x around the bed centre (2, 1.5)."""
    a = math.radians(angle_deg)
    return box(
        instance_id, category, (2 + radius * math.cos(a), 1.5 + radius * math.sin(a), 0.5), (0.2, 0.2, 0.2)
    )


# Standing at the bed (centre (2, 1.5)) facing the sofa (centre (5, 1.5)): forward is +x.
OBJECTS = [
    box(1, "bed", (2, 1.5, 0.3), (1.6, 1.0, 0.6)),
    box(2, "sofa", (5, 1.5, 0.4), (1.2, 0.8, 0.8)),
    box(3, "tv", (3.5, 4.5, 1.0), (1.2, 0.2, 0.7)),  # theta = atan2(3, 1.5) = 63.4: left, front
    _around_bed(4, "plant", 100),  # left; 10 degrees past the side axis: front/behind not asked
    _around_bed(5, "lamp", 200),  # right, behind
    _around_bed(6, "desk", 350),  # 10 degrees right of straight ahead: left/right not asked; front
    box(7, "shelf", (2.0, 4.0, 0.5), (3.0, 0.3, 1.0)),  # centre at 90 degrees, spans both halves
]
EXPECTED = {  # querying object -> (left/right, front/behind) at the bed facing the sofa
    "tv": ("left", "front"),
    "plant": ("left", None),
    "lamp": ("right", "behind"),
    "desk": (None, "front"),
    "shelf": ("left", None),
}


def _graph(objects=OBJECTS):
    return SceneGraph(
        make_scene(objects, [look_at((3, 0.1, 1.5), (3, 4, 0.8))], room_size=(6.0, 5.0), visible=[[]])
    )


def test_labels_on_paper():
    g = _graph()
    got = {q: (pt.classify(g, LR, "bed", "sofa", q), pt.classify(g, FB, "bed", "sofa", q)) for q in EXPECTED}
    assert got == EXPECTED
    # At the sofa facing the bed (forward 180 deg), the tv is at atan2(3, -1.5) = 116.6 deg, so
    # theta = 296.6: on the right, and in front (every corner has x < 5).
    assert pt.classify(g, LR, "sofa", "bed", "tv") == "right"
    assert pt.classify(g, FB, "sofa", "bed", "tv") == "front"


def test_a_box_crossing_the_side_line_is_not_asked_left_or_right():
    # A 3 m wide box centred 60 degrees to the left reaches across the line through the bed along +x.
    wide = box(9, "rug", (2 + 2 * math.cos(math.radians(60)), 1.5 + 0.4, 0.5), (3.0, 1.4, 0.2))
    g = _graph([*OBJECTS[:2], wide])
    assert pt.classify(g, LR, "bed", "sofa", "rug") is None


def test_questions_answer_as_the_rule_one_per_triple_and_variant():
    g = _graph()
    items = pt.generate(g, np.random.default_rng(0), cap=1000)
    seen = set()
    for item in items:
        p, o, q = re.match(
            r"Imagine you are standing at the (\w+) and facing the (\w+)\. Is the (\w+) ", item.question
        ).groups()
        assert item.answer == pt.classify(g, item.question_type, p, o, q)
        assert item.choices == pt.CHOICES[item.question_type]
        key = (item.question_type, frozenset((p, o, q)))
        assert key not in seen
        seen.add(key)
    assert {i.question_type for i in items} == {LR, FB}


def test_triples_outside_the_distance_range_are_not_asked():
    far = [*OBJECTS[:2], box(3, "tv", (3.5, 9.0, 1.0), (1.2, 0.2, 0.7))]  # 7 m from the bed
    scene = make_scene(far, [look_at((3, 0.1, 1.5), (3, 4, 0.8))], room_size=(6.0, 10.0), visible=[[]])
    assert pt.generate(SceneGraph(scene), np.random.default_rng(0), cap=10) == []


@pytest.mark.parametrize("angle", [14.0, 166.0, 194.0, 346.0])
def test_left_right_margin_is_15_degrees(angle):
    g = _graph([*OBJECTS[:2], _around_bed(9, "vase", angle, radius=3.0)])
    assert pt.classify(g, LR, "bed", "sofa", "vase") is None


centres = st.tuples(st.floats(-8, 8), st.floats(-8, 8))


@settings(max_examples=60, deadline=None)
@given(centres, centres, centres, st.floats(0.05, 1.0))
def test_standing_at_the_other_end_swaps_left_and_right(a, b, c, size):
    objects = [
        box(k + 1, name, (*xy, 0.5), (size,) * 3)
        for k, (name, xy) in enumerate(zip("abc", (a, b, c), strict=True))
    ]
    g = SceneGraph(
        make_scene(objects, [look_at((0, -9, 1.5), (0, 0, 0.5))], room_size=(20.0, 20.0), visible=[[]])
    )
    there, back = pt.classify(g, LR, "a", "b", "c"), pt.classify(g, LR, "b", "a", "c")
    assert {there, back} <= {None, "left", "right"} and (None in (there, back) or there != back)
