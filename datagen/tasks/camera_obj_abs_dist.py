"""VSTI-Bench camera-object distance (numeric, m): camera centre to the nearest point of an object in a frame.

Rule (reference ``get_cam_obj_abs_dist_qa.py``, camera-centre bug fixed): for a sampled frame and an
object that is the only visible instance of its category in that frame, d = distance from the
camera centre ``t`` (translation of ``cam_to_world``) to the nearest point of the object's box;
kept when 0.2 <= d <= 10 m; ground truth ``round(d, 1)``.
"""

from __future__ import annotations

import numpy as np

from datagen.scene_graph import SceneGraph
from datagen.tasks.common import (
    OFFICIAL_TEMPLATES,
    Paraphrases,
    QAItem,
    Template,
    TemplatePicker,
    format_number,
)

QUESTION_TYPE = "camera_obj_abs_dist"
_FIELDS = ["object_name", "frame_description"]
PARAPHRASES = {
    QUESTION_TYPE: Paraphrases(
        QUESTION_TYPE,
        Template(
            "What is the approximate distance (in meters) between the camera (or the person filming) and the "
            "nearest point of the {object_name} in {frame_description}?",
            _FIELDS,
        ),
        Template(
            "In {frame_description}, roughly how far (in meters) is the camera (or the person filming) from the "
            "nearest point of the {object_name}?",
            _FIELDS,
        ),
        Template(
            "About how many meters separate the camera (or the person filming) from the closest point of the "
            "{object_name} in {frame_description}?",
            _FIELDS,
        ),
    )
}
DEFAULT_CAP = 20
MIN_M, MAX_M = 0.2, 10.0


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    candidates = [(frame, n) for frame in graph.frames for n in graph.frame_unique_instances(frame).values()]
    items = []
    for i in rng.permutation(len(candidates)):
        if len(items) == cap:
            break
        frame, node = candidates[i]
        d = graph.camera_distance(frame, node.instance_id)
        if not MIN_M <= d <= MAX_M:
            continue
        template_id, template = templates.choose(PARAPHRASES[QUESTION_TYPE])
        question = template.format(
            object_name=node.category, frame_description=graph.frame_description(frame)
        )
        items.append(
            QAItem(
                QUESTION_TYPE,
                question,
                answer=format_number(d, 1),
                frame_indices=(frame.index,),
                template=template_id,
            )
        )
    return items
