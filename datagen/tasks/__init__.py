"""The QA tasks and their registry.

Each task is a module with ``generate(graph, rng, cap) -> list[QAItem]``, its templates, thresholds
and ``DEFAULT_CAP`` (questions per scene and question type). ``TASKS`` maps the task name (the
``--tasks`` value of ``jobs/generate_qa.py``) to it; ``question_types`` lists what each task emits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from datagen.scene_graph import SceneGraph
from datagen.tasks import (
    camera_displacement,
    camera_movement_direction,
    camera_obj_abs_dist,
    camera_obj_rel_dist,
    obj_appearance_order,
    obj_obj_relative_pos,
    object_abs_distance,
    object_counting,
    object_rel_direction,
    object_rel_distance,
    object_size_estimation,
    room_size_estimation,
    route_planning,
)
from datagen.tasks.common import QAItem


@dataclass(frozen=True)
class Task:
    name: str
    benchmark: str  # "vsibench" | "vstibench"
    generate: Callable[[SceneGraph, np.random.Generator, int], list[QAItem]]
    default_cap: int
    question_types: tuple[str, ...]


def _task(name: str, benchmark: str, module, question_types) -> Task:
    return Task(name, benchmark, module.generate, module.DEFAULT_CAP, tuple(question_types))


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _task("object_counting", "vsibench", object_counting, [object_counting.QUESTION_TYPE]),
        _task(
            "object_size_estimation",
            "vsibench",
            object_size_estimation,
            [object_size_estimation.QUESTION_TYPE],
        ),
        _task("room_size_estimation", "vsibench", room_size_estimation, [room_size_estimation.QUESTION_TYPE]),
        _task("object_abs_distance", "vsibench", object_abs_distance, [object_abs_distance.QUESTION_TYPE]),
        _task("object_rel_distance", "vsibench", object_rel_distance, object_rel_distance.VARIANTS),
        _task("object_rel_direction", "vsibench", object_rel_direction, object_rel_direction.TEMPLATES),
        _task("obj_appearance_order", "vsibench", obj_appearance_order, [obj_appearance_order.QUESTION_TYPE]),
        _task("route_planning", "vsibench", route_planning, [route_planning.QUESTION_TYPE]),
        _task("camera_obj_abs_dist", "vstibench", camera_obj_abs_dist, [camera_obj_abs_dist.QUESTION_TYPE]),
        _task("camera_obj_rel_dist", "vstibench", camera_obj_rel_dist, camera_obj_rel_dist.VARIANTS),
        _task("camera_displacement", "vstibench", camera_displacement, [camera_displacement.QUESTION_TYPE]),
        _task(
            "camera_movement_direction",
            "vstibench",
            camera_movement_direction,
            camera_movement_direction.VARIANTS,
        ),
        _task("obj_obj_relative_pos", "vstibench", obj_obj_relative_pos, obj_obj_relative_pos.VARIANTS),
    )
}

__all__ = ["QAItem", "TASKS", "Task"]
