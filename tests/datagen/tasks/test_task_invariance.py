"""Every task at once, official and extended: a scene turned about Z and moved gives the same questions,
answers and (drawn) wordings."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datagen.scene_graph import SceneGraph
from datagen.tasks import TASK_SETS, TASKS
from datagen.tasks.common import TemplatePicker
from tests.datagen.scene_builder import random_scene, transform_scene

CAP = 6


def _generate_all(scene) -> dict:
    graph = SceneGraph(scene)
    return {
        name: task.generate(
            graph, np.random.default_rng(11), CAP, templates=TemplatePicker(np.random.default_rng(12))
        )
        for name, task in TASKS.items()
    }


@pytest.fixture(scope="module")
def scene_and_items():
    scene = random_scene(np.random.default_rng(0), num_objects=30, num_frames=300, scene_id="room-b")
    items = _generate_all(scene)
    assert set(items) == set(TASK_SETS["all"])
    assert all(items.values()), f"tasks without questions: {[n for n, i in items.items() if not i]}"
    return scene, items


@settings(max_examples=3, deadline=None)
@given(st.floats(0, 360), st.tuples(st.floats(-50, 50), st.floats(-50, 50), st.floats(-2, 2)))
def test_every_task_is_invariant_to_rotation_about_z_and_translation(scene_and_items, yaw, shift):
    scene, expected = scene_and_items
    moved = _generate_all(transform_scene(scene, yaw, shift))
    for name in TASKS:
        assert moved[name] == expected[name], name
