"""VSTI-Bench camera movement direction (multiple choice, 4/3/2): net motion relative to the start pose.

Rule (reference ``get_camera_movement_direction_qa_v1/v2/v3.py``): for sampled frames i < j, the
displacement in the start camera's axes is ``d = R_i^T (t_j - t_i)`` (OpenCV: x right, z forward;
y, vertical, is ignored). A component is significant when its magnitude exceeds tau (1.0 m for 4
choices, 0.5 m for 3 and 2); with both significant the larger wins (ties go to z). Forward/Backward
by the sign of d_z, Right/Left by the sign of d_x. Options: all four directions, or the answer plus
2 (or 1) random other directions.
"""

from __future__ import annotations

import numpy as np

from datagen.scene_graph import FrameNode, SceneGraph
from datagen.tasks.common import OFFICIAL_TEMPLATES, QAItem, TemplatePicker, paraphrases_by_choice_count

DIRECTIONS = ("Forward", "Backward", "Left", "Right")
_TEXTS = (  # official first; {choices} is the list of choice placeholders
    "During the sequence between {{start_frame_description}} and {{end_frame_description}}, what was the primary "
    "consistent direction of the camera's movement relative to its orientation at the start? The options are {choices}.",
    "Relative to the way the camera was facing at {{start_frame_description}}, in which main direction did it move "
    "between {{start_frame_description}} and {{end_frame_description}}? The options are {choices}.",
    "Between {{start_frame_description}} and {{end_frame_description}}, which direction best describes the "
    "camera's overall movement, relative to its orientation at the start? Choose from {choices}.",
)
_CHOICE_LISTS = {
    4: "{choice_a}, {choice_b}, {choice_c}, and {choice_d}",
    3: "{choice_a}, {choice_b}, and {choice_c}",
    2: "{choice_a} and {choice_b}",
}
VARIANTS = {  # question_type -> (number of choices, significance threshold tau in metres)
    "camera_movement_direction": (4, 1.0),
    "camera_movement_direction_v2": (3, 0.5),
    "camera_movement_direction_v3": (2, 0.5),
}
PARAPHRASES = paraphrases_by_choice_count(
    _TEXTS,
    {qt: n for qt, (n, _) in VARIANTS.items()},
    ["start_frame_description", "end_frame_description"],
    listing=_CHOICE_LISTS.get,
)
DEFAULT_CAP = 5


def movement_direction(start: FrameNode, end: FrameNode, tau: float) -> str | None:
    """The dominant direction of the camera's net motion in the start camera's axes, or None if small."""
    delta = start.world_to_camera(end.camera_center[None])[0]  # (3,) = R_i^T (t_j - t_i)
    dx, dz = float(delta[0]), float(delta[2])
    significant_x, significant_z = abs(dx) > tau, abs(dz) > tau
    if not (significant_x or significant_z):
        return None
    if significant_z and (not significant_x or abs(dz) >= abs(dx)):
        return "Forward" if dz > 0 else "Backward"
    return "Right" if dx > 0 else "Left"


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    frames = graph.frames
    pairs = [(a, b) for a in range(len(frames)) for b in range(a + 1, len(frames))]
    items = []
    for question_type, (n, tau) in VARIANTS.items():
        kept = 0
        for p in rng.permutation(len(pairs)):
            if kept == cap:
                break
            start, end = frames[pairs[p][0]], frames[pairs[p][1]]
            answer = movement_direction(start, end, tau)
            if answer is None:
                continue
            others = [d for d in DIRECTIONS if d != answer]
            picked = [others[i] for i in sorted(rng.choice(len(others), size=n - 1, replace=False))]
            template_id, template = templates.choose(PARAPHRASES[question_type])
            question = template.format_keeping_choices(
                start_frame_description=graph.frame_description(start),
                end_frame_description=graph.frame_description(end),
            )
            items.append(
                QAItem(
                    question_type,
                    question,
                    answer=answer,
                    choices=(answer, *picked),
                    frame_indices=(start.index, end.index),
                    choices_in_question=True,
                    template=template_id,
                )
            )
            kept += 1
    return items
