"""object_depth_order (3 / 2 choices): depths worked out on paper, both margins, depth is not distance."""

from __future__ import annotations

import re

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.scene_graph import SceneGraph
from datagen.tasks import object_depth_order as do
from tests.datagen.scene_builder import box, look_at, make_scene

# Camera at (0, 0, 1) looking along +y: depth = world y. (centre depth, near depth) of each box:
#   a (2.0, 1.8)   b (2.6, 2.4)   c (3.0, 2.8)   p (1.5, 1.3), 2 m to the right
#   e (4.0, 2.3): a long box whose near face is nearer than b's although its centre is far behind
#   f: straddles the camera plane (corners at depth -0.1 .. 0.3): never a candidate
OBJECTS = [
    box(1, "a", (0, 2.0, 1), (0.4, 0.4, 0.4)),
    box(2, "b", (1.5, 2.6, 1), (0.4, 0.4, 0.4)),
    box(3, "c", (-0.3, 3.0, 1), (0.4, 0.4, 0.4)),
    box(4, "e", (0.5, 4.0, 0.5), (1.0, 3.4, 1.0)),
    box(5, "f", (2, 0.1, 1), (0.4, 0.4, 0.4)),
    box(6, "p", (2.0, 1.5, 1), (0.4, 0.4, 0.4)),
]
# Pairs: the nearer centre must lead by max(0.3 m, 15 %) and the nearer near face by 0.1 m.
# b vs c: 0.4 >= max(0.3, 0.39) -> b. b vs e and c vs e: e's near face (2.3) is nearer -> not asked.
PAIRS = {
    frozenset("ab"): "a",
    frozenset("ac"): "a",
    frozenset("ae"): "a",
    frozenset("ap"): "p",
    frozenset("bc"): "b",
    frozenset("bp"): "p",
    frozenset("cp"): "p",
    frozenset("ep"): "p",
}
TRIPLES = {
    frozenset("abc"): "a",
    frozenset("abe"): "a",
    frozenset("abp"): "p",
    frozenset("ace"): "a",
    frozenset("acp"): "p",
    frozenset("aep"): "p",
    frozenset("bcp"): "p",
    frozenset("bep"): "p",
    frozenset("cep"): "p",
}  # b, c, e: b leads c but not e -> not asked


def _graph():
    pose = look_at((0, 0, 1), (0, 5, 1))
    return SceneGraph(make_scene(OBJECTS, [pose] * 32, visible=[[1, 2, 3, 4, 5, 6]] * 32))


def test_depths_on_paper_and_depth_is_not_distance():
    g = _graph()
    frame = g.frames[0]
    got = {g.instances[i].category: do.depths(frame, g.instances[i]) for i in (1, 2, 3, 4, 6)}
    expected = {"a": (2.0, 1.8), "b": (2.6, 2.4), "c": (3.0, 2.8), "e": (4.0, 2.3), "p": (1.5, 1.3)}
    for name, (centre, near) in expected.items():
        np.testing.assert_allclose(got[name], (centre, near), atol=1e-9)
    # p is nearer in depth, a is nearer in straight distance (1.8 m against sqrt(1.8^2 + 1.3^2) = 2.22 m).
    assert g.camera_distance(frame, 1) < g.camera_distance(frame, 6)
    assert do.nearest_in_depth(frame, [g.instances[1], g.instances[6]]).category == "p"


def test_questions_keep_exactly_the_unambiguous_option_sets():
    items = do.generate(_graph(), np.random.default_rng(0), cap=100)
    expected = {"object_depth_order": TRIPLES, "object_depth_order_v2": PAIRS}
    for question_type, n in do.VARIANTS.items():
        asked = [i for i in items if i.question_type == question_type]
        assert len(asked) == 32  # one per frame: every frame has an answerable set among its first 10
        assert {i.frame_indices for i in asked} == {(k,) for k in range(32)}
        for item in asked:
            assert len(item.choices) == n and item.choices_in_question and "f" not in item.choices
            assert expected[question_type][frozenset(item.choices)] == item.answer
            assert re.fullmatch(
                r"In frame \d+ of 32, which of these objects \(.*\) is closest to the camera.*", item.question
            )
            assert item.template == f"{question_type}/0"


def test_objects_behind_or_across_the_camera_plane_are_not_candidates():
    g = _graph()
    only = SceneGraph(make_scene(OBJECTS, [look_at((0, 0, 1), (0, 5, 1))] * 32, visible=[[5, 1]] * 32))
    assert do.generate(only, np.random.default_rng(0), cap=10) == []  # f is out, a alone is too few
    assert do.depths(g.frames[0], g.instances[5])[1] < do.MIN_CORNER_DEPTH_M


cube = st.tuples(
    st.floats(-3, 3), st.floats(0.8, 8), st.floats(0.2, 2.0), st.floats(0.1, 1.2), st.floats(0, 90)
)


@settings(max_examples=40, deadline=None)
@given(st.lists(cube, min_size=2, max_size=3), st.floats(0.0, 3.0), st.randoms(use_true_random=False))
def test_order_of_options_does_not_matter_and_stepping_back_never_flips_the_answer(
    boxes, step_back, shuffler
):
    objects = [box(k + 1, f"o{k}", (x, y, z), (s, s, s), yaw) for k, (x, y, z, s, yaw) in enumerate(boxes)]
    poses = [look_at((0, 0, 1.2), (0, 5, 1.2)), look_at((0, -step_back, 1.2), (0, 5, 1.2))]
    g = SceneGraph(make_scene(objects, poses, visible=[[]] * 2, width=64, height=48))
    nodes = list(g.instances.values())
    near, far = (do.nearest_in_depth(g.frames[k], nodes) for k in (0, -1))  # video frames 0 and 1
    shuffled = list(nodes)
    shuffler.shuffle(shuffled)
    assert do.nearest_in_depth(g.frames[0], shuffled) == near
    # All depths grow by the same step: the margins on near faces are unchanged and the relative one grows.
    assert far is None or far == near
