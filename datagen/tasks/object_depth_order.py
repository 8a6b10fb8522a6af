"""Extended: depth order in a frame (multiple choice, 3/2): which object is nearest the camera in depth.

"In frame k of K, which of these objects (A, B, C) is closest to the camera in depth?" Depth is
the distance along the camera's viewing direction (the OpenCV camera z of a point), not the straight
distance of ``camera_obj_rel_dist``: a lamp 1 m to the side at 2 m depth is nearer in depth than a
chair straight ahead at 2.5 m.

Rule, in a sampled frame:

- candidates are the frame-unique visible objects (the only visible instance of their category)
  whose 8 box corners all lie at least 0.3 m in front of the camera (depth is then defined for the
  whole box);
- an object's depth is the camera z of its box centre, its near depth the smallest corner z;
- the answer A is the option of smallest depth; the question is asked only when, for every other
  option B, depth(B) - depth(A) >= max(0.3 m, 15 % of depth(A)) *and* near(B) - near(A) >= 0.1 m,
  so reading "closer" by centres or by nearest points gives the same answer with a margin.

Up to ``MAX_TRIES_PER_FRAME`` distinct random option sets per frame are tried; at most one question
per frame and variant.
"""

from __future__ import annotations

import numpy as np

from datagen.scene_graph import FrameNode, InstanceNode, SceneGraph
from datagen.tasks.common import (
    OFFICIAL_TEMPLATES,
    QAItem,
    TemplatePicker,
    paraphrases_by_choice_count,
    shuffled_combinations,
)

VARIANTS = {"object_depth_order": 3, "object_depth_order_v2": 2}  # question_type -> number of choices
_TEXTS = (
    "In {{frame_description}}, which of these objects ({choices}) is closest to the camera in depth, measured "
    "along the camera's viewing direction?",
    "Measuring depth along the viewing direction of the camera in {{frame_description}}, which of these objects "
    "({choices}) is nearest to the camera?",
    "Which of these objects ({choices}) has the smallest depth in {{frame_description}}, that is, the smallest "
    "distance from the camera along its viewing direction?",
)
PARAPHRASES = paraphrases_by_choice_count(_TEXTS, VARIANTS, ["frame_description"])
DEFAULT_CAP = 10
MIN_CORNER_DEPTH_M = 0.3
MIN_GAP_M = 0.3
RELATIVE_GAP = 0.15
MIN_NEAR_GAP_M = 0.1
MAX_TRIES_PER_FRAME = 10


def depths(frame: FrameNode, node: InstanceNode) -> tuple[float, float]:
    """(centre depth, near depth) of a box in a frame, in metres along the camera's z axis."""
    centre = frame.world_to_camera(node.center[None])[0, 2]
    corners = frame.world_to_camera(node.corners)[:, 2]  # (8,)
    return float(centre), float(corners.min())


def nearest_in_depth(frame: FrameNode, options: list[InstanceNode]) -> InstanceNode | None:
    """The option clearly nearest the camera in depth (centre and near depth, with the margins), or None."""
    measured = [depths(frame, n) for n in options]
    best = int(np.argmin([centre for centre, _ in measured]))
    centre_a, near_a = measured[best]
    gap = max(MIN_GAP_M, RELATIVE_GAP * centre_a)
    for k, (centre_b, near_b) in enumerate(measured):
        if k != best and (centre_b - centre_a < gap or near_b - near_a < MIN_NEAR_GAP_M):
            return None
    return options[best]


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    items = []
    for question_type, n in VARIANTS.items():
        kept = 0
        for frame_i in rng.permutation(len(graph.frames)):
            if kept == cap:
                break
            frame = graph.frames[frame_i]
            candidates = [
                node
                for _, node in sorted(graph.frame_unique_instances(frame).items())
                if frame.world_to_camera(node.corners)[:, 2].min() >= MIN_CORNER_DEPTH_M
            ]
            if len(candidates) < n:
                continue
            for options in shuffled_combinations(candidates, n, rng)[:MAX_TRIES_PER_FRAME]:
                answer = nearest_in_depth(frame, list(options))
                if answer is None:
                    continue
                template_id, template = templates.choose(PARAPHRASES[question_type])
                items.append(
                    QAItem(
                        question_type,
                        template.format_keeping_choices(frame_description=graph.frame_description(frame)),
                        answer=answer.category,
                        choices=tuple(o.category for o in options),
                        frame_indices=(frame.index,),
                        choices_in_question=True,
                        template=template_id,
                    )
                )
                kept += 1
                break
    return items
