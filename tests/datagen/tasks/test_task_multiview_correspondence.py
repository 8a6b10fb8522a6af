"""multiview_correspondence: boxes projected on paper, the overlap rule, answers against the boxes' instances."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.scene_graph import SceneGraph
from datagen.tasks import multiview_correspondence as mv
from tests.datagen.scene_builder import box, look_at, make_scene

# Frames 0-15: camera at (3, 0, 1) looking along +y (640 x 480, fx = fy = 320, so u = 320 + 320 x / z and
# v = 240 + 320 y / z with camera y = 1 - world z). Chair 1 spans camera x [-1.25, -0.75], depth [2.75, 3.25],
# y [0.1, 1.0]: u from 320 - 320 * 1.25 / 2.75 = 174.5 to 320 - 320 * 0.75 / 3.25 = 246.2, v from
# 240 + 32 / 3.25 = 249.8 to 240 + 320 / 2.75 = 356.4. Chair 2 is its mirror image (u from 393.8 to 465.5).
# Chair 3 stands behind chair 1 on nearly the same line of sight: box [184.9, 247.5, 238.4, 325.3], IoU with
# chair 1's 0.52 > 0.3, so neither can be pointed at in those frames. Frames 16-31 look diagonally across
# the room and see the three chairs apart. The table is the only one of its category: never asked.
OBJECTS = [
    box(1, "chair", (2, 3, 0.45), (0.5, 0.5, 0.9)),
    box(2, "chair", (4, 3, 0.45), (0.5, 0.5, 0.9)),
    box(3, "chair", (5 / 3, 4.0, 0.45), (0.5, 0.5, 0.9)),
    box(4, "table", (3, 4.5, 0.4), (1, 0.6, 0.8)),
]
POSES = [look_at((3, 0, 1), (3, 5, 1))] * 16 + [look_at((0.3, 0.3, 1.2), (4.5, 4.5, 0.5))] * 16


def _graph():
    return SceneGraph(make_scene(OBJECTS, POSES))  # visibility and boxes projected


def test_boxes_and_pointable_instances_on_paper():
    g = _graph()
    front = g.frames[0].visibility
    assert mv.box_text(front[1].bbox_2d) == "[175, 250, 246, 356]"
    assert mv.box_text(front[2].bbox_2d) == "[394, 250, 465, 356]"
    assert abs(mv.box_iou(front[1].bbox_2d, front[3].bbox_2d) - 0.52) < 0.01
    assert mv.pointable(g, g.frames[0]) == {"chair": [2]}
    assert mv.pointable(g, g.frames[16]) == {"chair": [1, 2, 3]}


def test_answers_are_the_identity_of_the_boxed_instances_and_balanced():
    g = _graph()
    items = mv.generate(g, np.random.default_rng(0), cap=60)
    assert len(items) == 60
    pattern = r"the box (\[[\d, ]+\]) in frame (\d+) of 32"
    for item in items:
        (box_a, k_a), (box_b, k_b) = re.findall(pattern, item.question)
        assert int(k_b) - int(k_a) >= mv.MIN_RANK_GAP and "table" not in item.question
        assert item.frame_indices == (int(k_a) - 1, int(k_b) - 1)  # 32 video frames: frame k is index k - 1
        ids = [
            next(i for i, v in g.frames[int(k) - 1].visibility.items() if mv.box_text(v.bbox_2d) == b)
            for b, k in ((box_a, k_a), (box_b, k_b))
        ]
        assert item.answer == ("Yes" if ids[0] == ids[1] else "No") and item.choices == ("Yes", "No")
        for i, k in zip(ids, (k_a, k_b), strict=True):  # only pointable instances are asked about
            assert i in mv.pointable(g, g.frames[int(k) - 1])["chair"]
        assert "640x480" in item.question
    answers = Counter(i.answer for i in items)
    assert answers["Yes"] == answers["No"] == 30


def test_a_category_with_one_instance_is_never_asked():
    g = SceneGraph(make_scene(OBJECTS[:1] + OBJECTS[3:], POSES))
    assert mv.generate(g, np.random.default_rng(0), cap=10) == []


coordinates = st.tuples(st.floats(0, 600), st.floats(0, 400), st.floats(1, 200), st.floats(1, 200))


@settings(max_examples=100, deadline=None)
@given(coordinates, coordinates)
def test_iou_is_symmetric_bounded_and_one_for_a_box_with_itself(a, b):
    box_a = (a[0], a[1], a[0] + a[2], a[1] + a[3])
    box_b = (b[0], b[1], b[0] + b[2], b[1] + b[3])
    iou = mv.box_iou(box_a, box_b)
    assert 0.0 <= iou <= 1.0 + 1e-12 and abs(iou - mv.box_iou(box_b, box_a)) < 1e-12
    assert abs(mv.box_iou(box_a, box_a) - 1.0) < 1e-12
