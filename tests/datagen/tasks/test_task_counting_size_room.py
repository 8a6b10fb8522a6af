"""object_counting, object_size_estimation, room_size_estimation on the hand-built room (conftest)."""

from __future__ import annotations

import numpy as np

from datagen.tasks import object_counting, object_size_estimation, room_size_estimation


def test_counting_asks_only_categories_with_several_instances(room_graph):
    items = object_counting.generate(room_graph, np.random.default_rng(0), cap=10)
    assert [(i.question, i.answer) for i in items] == [("How many chair(s) are in this room?", "2")]
    assert items[0].question_type == "object_counting" and items[0].choices == ()


def test_size_is_the_longest_side_of_unique_objects_in_cm(room_graph):
    items = object_size_estimation.generate(room_graph, np.random.default_rng(0), cap=10)
    got = {i.question.split("height) of the ")[1].split(",")[0]: i.answer for i in items}
    assert got == {"bed": "200", "sofa": "200", "tv": "120", "table": "100", "lamp": "40"}
    assert all(i.question.endswith("measured in centimeters?") for i in items)
    assert len(object_size_estimation.generate(room_graph, np.random.default_rng(0), cap=2)) == 2


def test_room_size_is_the_floor_area_to_one_decimal(room_graph):
    (item,) = room_size_estimation.generate(room_graph, np.random.default_rng(0))
    assert item.answer == "30.0"
    assert item.question == (
        "What is the size of this room (in square meters)? If multiple rooms are shown, estimate the size of the "
        "combined space."
    )
    assert room_size_estimation.generate(room_graph, np.random.default_rng(0), cap=0) == []
