"""VSTI-Bench camera-object relative distance (multiple choice, 4/3/2): which object is closest to the camera.

Rule (reference ``get_cam_obj_rel_dist_qa_v1/v2/v3.py``, camera-centre bug fixed): in a sampled
frame, the candidates are the frame-unique visible objects at least 0.5 m from the camera centre
(distances to the nearest box point, rounded to 1 cm); the answer is the nearest; distractors are
taken in random order, each accepted only if its distance differs by at least 0.15 m from every
option already accepted (the answer included). At most one question per frame and variant.
"""

from __future__ import annotations

import numpy as np

from datagen.scene_graph import SceneGraph
from datagen.tasks.common import OFFICIAL_TEMPLATES, QAItem, TemplatePicker, paraphrases_by_choice_count

_TEXTS = (  # official first; {choices} is the list of choice placeholders
    "Measuring from the closest point of each object, which of these objects ({choices}) is the closest to the "
    "camera in {{frame_description}}?",
    "In {{frame_description}}, which of these objects ({choices}) is nearest to the camera, measuring to the "
    "closest point of each object?",
    "Which of these objects ({choices}) is closest to the camera in {{frame_description}}? Measure from the "
    "closest point of each object.",
)
VARIANTS = {"camera_obj_rel_dist_v1": 4, "camera_obj_rel_dist_v2": 3, "camera_obj_rel_dist_v3": 2}
PARAPHRASES = paraphrases_by_choice_count(_TEXTS, VARIANTS, ["frame_description"])
DEFAULT_CAP = 20
MIN_CAMERA_M = 0.5
MIN_SEPARATION_M = 0.15


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
            distances = {
                c: round(graph.camera_distance(frame, node.instance_id), 2)
                for c, node in sorted(graph.frame_unique_instances(frame).items())
            }
            distances = {c: d for c, d in distances.items() if d >= MIN_CAMERA_M}
            if len(distances) < n:
                continue
            answer = min(distances, key=lambda c: (distances[c], c))
            accepted = [answer]
            others = [c for c in distances if c != answer]
            for j in rng.permutation(len(others)):
                if len(accepted) == n:
                    break
                if all(abs(distances[others[j]] - distances[a]) >= MIN_SEPARATION_M for a in accepted):
                    accepted.append(others[j])
            if len(accepted) < n:
                continue
            template_id, template = templates.choose(PARAPHRASES[question_type])
            items.append(
                QAItem(
                    question_type,
                    template.format_keeping_choices(frame_description=graph.frame_description(frame)),
                    answer=answer,
                    choices=tuple(accepted),
                    frame_indices=(frame.index,),
                    choices_in_question=True,
                    template=template_id,
                )
            )
            kept += 1
    return items
