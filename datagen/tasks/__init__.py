"""The QA tasks, their registry and the named task sets.

Each task is a module with ``generate(graph, rng, cap, templates) -> list[QAItem]``, its question
templates with their paraphrases (``PARAPHRASES``: question type -> :class:`~datagen.tasks.common.Paraphrases`,
official template first), thresholds and ``DEFAULT_CAP`` (questions per scene and question type).
``TASKS`` maps the task name to it; ``question_types`` lists what each task emits, ``benchmark`` the
benchmark its question types are scored under (:func:`vlm3r_core.metrics.benchmark_of` agrees).

``TASK_SETS`` names groups of tasks that ``QAConfig.tasks`` accepts beside task names:

- ``"official"``: the 13 VSI-Bench / VSTI-Bench families (the default; reproduction data);
- ``"extended"``: this project's families, scored as the ``"vlm3r-ext"`` benchmark: depth order,
  object-to-camera direction, perspective taking, size comparison, multi-view correspondence and
  one-turn routes;
- ``"all"``: both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from datagen.tasks import (
    camera_displacement,
    camera_movement_direction,
    camera_obj_abs_dist,
    camera_obj_rel_dist,
    multiview_correspondence,
    obj_appearance_order,
    obj_obj_relative_pos,
    object_abs_distance,
    object_camera_direction,
    object_counting,
    object_depth_order,
    object_rel_direction,
    object_rel_distance,
    object_size_comparison,
    object_size_estimation,
    perspective_taking,
    room_size_estimation,
    route_planning,
    route_planning_one_turn,
)
from datagen.tasks.common import Paraphrases, QAItem


@dataclass(frozen=True)
class Task:
    """A registered task.

    Attributes:
        name: the task name (``QAConfig.tasks``).
        benchmark: ``"vsibench"``, ``"vstibench"`` or ``"vlm3r-ext"``.
        generate: ``generate(graph, rng, cap, templates=..., [planner=...])``.
        default_cap: questions per scene and question type when the config sets none.
        paraphrases: question type -> its templates, official first.
        uses_route_planner: ``generate`` takes ``planner`` (and rows record it in ``generator_version``).
    """

    name: str
    benchmark: str
    generate: Callable[..., list[QAItem]]
    default_cap: int
    paraphrases: dict[str, Paraphrases]
    uses_route_planner: bool = False

    @property
    def question_types(self) -> tuple[str, ...]:
        return tuple(self.paraphrases)


def _task(name: str, benchmark: str, module, uses_route_planner: bool = False) -> Task:
    return Task(name, benchmark, module.generate, module.DEFAULT_CAP, module.PARAPHRASES, uses_route_planner)


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        _task("object_counting", "vsibench", object_counting),
        _task("object_size_estimation", "vsibench", object_size_estimation),
        _task("room_size_estimation", "vsibench", room_size_estimation),
        _task("object_abs_distance", "vsibench", object_abs_distance),
        _task("object_rel_distance", "vsibench", object_rel_distance),
        _task("object_rel_direction", "vsibench", object_rel_direction),
        _task("obj_appearance_order", "vsibench", obj_appearance_order),
        _task("route_planning", "vsibench", route_planning, uses_route_planner=True),
        _task("camera_obj_abs_dist", "vstibench", camera_obj_abs_dist),
        _task("camera_obj_rel_dist", "vstibench", camera_obj_rel_dist),
        _task("camera_displacement", "vstibench", camera_displacement),
        _task("camera_movement_direction", "vstibench", camera_movement_direction),
        _task("obj_obj_relative_pos", "vstibench", obj_obj_relative_pos),
        _task("object_depth_order", "vlm3r-ext", object_depth_order),
        _task("object_camera_direction", "vlm3r-ext", object_camera_direction),
        _task("perspective_taking", "vlm3r-ext", perspective_taking),
        _task("object_size_comparison", "vlm3r-ext", object_size_comparison),
        _task("multiview_correspondence", "vlm3r-ext", multiview_correspondence),
        _task("route_planning_one_turn", "vlm3r-ext", route_planning_one_turn, uses_route_planner=True),
    )
}

_OFFICIAL = tuple(name for name, t in TASKS.items() if t.benchmark in ("vsibench", "vstibench"))
_EXTENDED = tuple(name for name, t in TASKS.items() if t.benchmark == "vlm3r-ext")
TASK_SETS: dict[str, tuple[str, ...]] = {
    "official": _OFFICIAL,
    "extended": _EXTENDED,
    "all": _OFFICIAL + _EXTENDED,
}
assert not set(TASK_SETS) & set(TASKS), "a task set must not share a name with a task"


def expand_task_names(names: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Task and task-set names -> task names, each once, in the order given (a set in its own order).

    Raises:
        ValueError: a name that is neither a task nor a task set.
    """
    unknown = [n for n in names if n not in TASKS and n not in TASK_SETS]
    if unknown:
        raise ValueError(
            f"unknown task(s) {unknown}; known: task sets {list(TASK_SETS)}, tasks {list(TASKS)}"
        )
    expanded = [t for n in names for t in (TASK_SETS[n] if n in TASK_SETS else (n,))]
    return tuple(dict.fromkeys(expanded))


__all__ = ["QAItem", "TASKS", "TASK_SETS", "Task", "expand_task_names"]
