"""VSTI-Bench object-object relative position in a frame (2 choices): near/far, left/right, up/down.

Rule (reference ``get_obj_obj_rel_pos_{nf,lr,ud}_qa.py``, placeholder bug fixed): in a sampled frame,
for a pair of frame-unique visible objects A and B, the 8 box corners of each go into the camera
frame (OpenCV: x right, y down, z forward) and give per-axis [min, max] ranges. With m = 0.15 m:

- near/far on z: A is Near if min_z(B) - max_z(A) > m, Far if min_z(A) - max_z(B) > m;
- left/right on x: A is to the Left if min_x(B) - max_x(A) > m, Right if min_x(A) - max_x(B) > m;
- up/down on y: A is Up if min_y(B) - max_y(A) > m, Down if min_y(A) - max_y(B) > m.

Pairs whose ranges overlap (within m) on the axis are not asked.
"""

from __future__ import annotations

import numpy as np

from datagen.scene_graph import FrameNode, InstanceNode, SceneGraph
from datagen.tasks.common import OFFICIAL_TEMPLATES, Paraphrases, QAItem, Template, TemplatePicker

_FIELDS = ["frame_description", "obj_A_name", "obj_B_name"]
VARIANTS = {  # question_type -> (camera axis, label when A is on the low side, label when on the high side)
    "obj_obj_relative_pos_nf": (2, "Near", "Far"),
    "obj_obj_relative_pos_lr": (0, "Left", "Right"),
    "obj_obj_relative_pos_ud": (1, "Up", "Down"),
}
_TEXTS = {  # official first
    "obj_obj_relative_pos_nf": (
        "In {frame_description}, relative to the camera, is {obj_A_name} [Near/Far] compared to {obj_B_name}?",
        "In {frame_description}, compared to {obj_B_name}, is {obj_A_name} [Near/Far] relative to the camera?",
        "Seen from the camera in {frame_description}, is {obj_A_name} nearer (Near) or farther (Far) than "
        "{obj_B_name}?",
    ),
    "obj_obj_relative_pos_lr": (
        "In {frame_description}, relative to {obj_B_name}, is {obj_A_name} to the [Left/Right]?",
        "In {frame_description}, is {obj_A_name} to the Left or to the Right of {obj_B_name}?",
        "Seen from the camera in {frame_description}, does {obj_A_name} appear to the Left or to the Right of "
        "{obj_B_name}?",
    ),
    "obj_obj_relative_pos_ud": (
        "In {frame_description}, relative to {obj_B_name}, is {obj_A_name} to the [Up/Down]?",
        "In {frame_description}, is {obj_A_name} Up or Down relative to {obj_B_name}?",
        "Seen from the camera in {frame_description}, is {obj_A_name} above (Up) or below (Down) {obj_B_name}?",
    ),
}
PARAPHRASES = {qt: Paraphrases(qt, *(Template(t, _FIELDS) for t in texts)) for qt, texts in _TEXTS.items()}
DEFAULT_CAP = 20
MARGIN_M = 0.15


def relative_position(question_type: str, frame: FrameNode, a: InstanceNode, b: InstanceNode) -> str | None:
    """Where A is relative to B along the variant's camera axis, or None when they overlap."""
    axis, low, high = VARIANTS[question_type]
    range_a = frame.world_to_camera(a.corners)[:, axis]  # (8,)
    range_b = frame.world_to_camera(b.corners)[:, axis]  # (8,)
    if range_b.min() - range_a.max() > MARGIN_M:
        return low
    if range_a.min() - range_b.max() > MARGIN_M:
        return high
    return None


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    candidates = []
    for frame in graph.frames:
        nodes = sorted(graph.frame_unique_instances(frame).values(), key=lambda n: n.category)
        candidates += [
            (frame, nodes[i], nodes[j]) for i in range(len(nodes)) for j in range(i + 1, len(nodes))
        ]
    items = []
    for question_type, paraphrases in PARAPHRASES.items():
        _, low, high = VARIANTS[question_type]
        kept = 0
        for c in rng.permutation(len(candidates)):
            if kept == cap:
                break
            frame, a, b = candidates[c]
            if rng.random() < 0.5:
                a, b = b, a
            answer = relative_position(question_type, frame, a, b)
            if answer is None:
                continue
            template_id, template = templates.choose(paraphrases)
            question = template.format(
                frame_description=graph.frame_description(frame), obj_A_name=a.category, obj_B_name=b.category
            )
            items.append(
                QAItem(
                    question_type,
                    question,
                    answer=answer,
                    choices=(low, high),
                    frame_indices=(frame.index,),
                    template=template_id,
                )
            )
            kept += 1
    return items
