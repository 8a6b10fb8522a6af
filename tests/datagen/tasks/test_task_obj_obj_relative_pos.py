"""obj_obj_relative_pos (near/far, left/right, up/down) in the camera frame; swapping A and B flips it."""

from __future__ import annotations

import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.scene_graph import SceneGraph
from datagen.tasks import obj_obj_relative_pos as rp
from tests.datagen.scene_builder import box, look_at, make_scene

# Camera at (0, 0, 1) looking along +y: camera x = world x, camera y = -(world z - 1), depth = world y.
# In the camera frame (x, y, depth ranges):  a [-1.2, -0.8] x [-0.2, 0.2] x [2.8, 3.2]
#                                            b [ 0.8,  1.2] x [-0.2, 0.2] x [2.8, 3.2]
#                                            c [-1.2, -0.8] x [-1.2, -0.8] x [4.8, 5.2]
OBJECTS = [
    box(1, "a", (-1, 3, 1), (0.4, 0.4, 0.4)),
    box(2, "b", (1, 3, 1), (0.4, 0.4, 0.4)),
    box(3, "c", (-1, 5, 2), (0.4, 0.4, 0.4)),
]
EXPECTED = {  # (question_type, A, B) -> answer; pairs that overlap on the axis are absent
    ("obj_obj_relative_pos_lr", "a", "b"): "Left",
    ("obj_obj_relative_pos_lr", "b", "a"): "Right",
    ("obj_obj_relative_pos_lr", "b", "c"): "Right",
    ("obj_obj_relative_pos_lr", "c", "b"): "Left",
    ("obj_obj_relative_pos_nf", "a", "c"): "Near",
    ("obj_obj_relative_pos_nf", "c", "a"): "Far",
    ("obj_obj_relative_pos_nf", "b", "c"): "Near",
    ("obj_obj_relative_pos_nf", "c", "b"): "Far",
    ("obj_obj_relative_pos_ud", "a", "c"): "Down",
    ("obj_obj_relative_pos_ud", "c", "a"): "Up",
    ("obj_obj_relative_pos_ud", "b", "c"): "Down",
    ("obj_obj_relative_pos_ud", "c", "b"): "Up",
}

CHOICES = {
    "obj_obj_relative_pos_nf": ("Near", "Far"),
    "obj_obj_relative_pos_lr": ("Left", "Right"),
    "obj_obj_relative_pos_ud": ("Up", "Down"),
}


def test_relative_positions_on_paper():
    g = SceneGraph(make_scene(OBJECTS, [look_at((0, 0, 1), (0, 5, 1))] * 32, visible=[[1, 2, 3]] * 32))
    items = rp.generate(g, np.random.default_rng(0), cap=200)
    seen = set()
    for item in items:
        if item.question_type == "obj_obj_relative_pos_nf":
            a, b = re.match(
                r"In frame \d+ of 32, relative to the camera, is (\w) \[Near/Far\] compared to (\w)\?",
                item.question,
            ).groups()
        else:
            b, a = re.match(
                r"In frame \d+ of 32, relative to (\w), is (\w) to the \[", item.question
            ).groups()
        key = (item.question_type, a, b)
        assert EXPECTED[key] == item.answer, key
        assert item.choices == CHOICES[item.question_type]
        seen.add(frozenset((a, b)) | {item.question_type})
    assert len(seen) == 6  # 2 pairs per axis, each asked


boxes = st.tuples(
    st.tuples(st.floats(-3, 3), st.floats(1, 8), st.floats(0, 2.5)),
    st.tuples(*[st.floats(0.05, 1.5)] * 3),
    st.floats(0, 360),
)


@settings(max_examples=40, deadline=None)
@given(boxes, boxes, st.tuples(st.floats(-3, 3), st.floats(-3, 3)))
def test_swapping_a_and_b_flips_the_answer(box_a, box_b, look_xy):
    target = (*look_xy, 0.0) if abs(look_xy[0]) + abs(look_xy[1]) > 0.1 else (0, 5, 0)  # not straight down
    pose = look_at((0, 0, 1.2), target)
    g = SceneGraph(make_scene([box(1, "a", *box_a), box(2, "b", *box_b)], [pose], visible=[[1, 2]]))
    frame, a, b = g.frames[0], g.instances[1], g.instances[2]
    for question_type, (_, low, high) in rp.VARIANTS.items():
        forward, backward = (
            rp.relative_position(question_type, frame, a, b),
            rp.relative_position(question_type, frame, b, a),
        )
        assert {forward, backward} in ({None}, {low, high})
