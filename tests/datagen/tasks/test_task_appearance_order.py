"""obj_appearance_order: first appearance in the sampled frames, 1 s separation, distractor orders."""

from __future__ import annotations

import re
from itertools import combinations

import numpy as np
from conftest import ROOM_OBJECTS

from datagen.scene_graph import SceneGraph
from datagen.tasks import obj_appearance_order
from tests.datagen.scene_builder import look_at, make_scene

# 64 video frames at 2 fps: the 32 sampled frames are 0, 2, 4, ..., 63 (linspace(0, 63, 32) as int),
# so sampled frame k is video frame ~2k, at ~k seconds.
FIRST_SEEN = {1: 0, 2: 10, 3: 20, 4: 30, 6: 32, 7: 50}  # instance -> video frame of first sight


def _graph():
    sampled = np.linspace(0, 63, 32, dtype=int).tolist()
    visible = [
        [i for i, first in FIRST_SEEN.items() if first <= f and f in sampled or first < f] for f in range(64)
    ]
    poses = [look_at((3, 0.1, 1.5), (3, 4, 0.8))] * 64
    return SceneGraph(make_scene(ROOM_OBJECTS, poses, room_size=(6.0, 5.0), fps=2.0, visible=visible))


def test_first_appearance_times_use_sampled_frames():
    g = _graph()
    times = {c: f.timestamp for c, f in g.first_appearances().items()}
    # bed at frame 0 (0 s); sofa frame 10 (5 s); tv 20 (10 s); chair 30 (15 s); table 32 (16 s);
    # lamp 50 (25 s). The sampled indices happen to include all of them.
    assert times == {"bed": 0.0, "sofa": 5.0, "tv": 10.0, "chair": 15.0, "table": 16.0, "lamp": 25.0}


def test_orders_on_paper():
    items = obj_appearance_order.generate(_graph(), np.random.default_rng(0), cap=100)
    first = {"bed": 0, "sofa": 5, "tv": 10, "chair": 15, "table": 16, "lamp": 25}
    expected = {
        frozenset(c): ", ".join(sorted(c, key=first.get))
        for c in combinations(first, 4)
        if not {"chair", "table"} <= set(c)  # 1 s apart: not more than the 1 s margin
    }
    got = {}
    for item in items:
        asked = re.search(r"in the video: (.*)\?$", item.question).group(1).split(", ")
        got[frozenset(asked)] = item.answer
        assert len(item.choices) == 4 and len(set(item.choices)) == 4
        assert all(sorted(c.split(", ")) == sorted(asked) for c in item.choices)  # permutations of the 4
    assert got == expected and len(expected) == 9
