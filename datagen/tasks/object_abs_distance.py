"""VSI-Bench absolute distance (numeric, m): closest-point distance between two unique objects.

Rule (reference ``get_obj_abs_distance_qa.py``): unordered pairs of scene-unique categories;
ground truth ``round(d, 1)`` with d the closest-point distance of the two boxes (exact here, a 5 cm
shell grid in the reference); pairs with a ground truth below 0.2 m are dropped, and so are those
for which the reference's numeric distractors (U[0.25 gt, 1.75 gt], 1 decimal) cannot be drawn.
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
    numeric_distractors,
    shuffled_combinations,
)

QUESTION_TYPE = "object_abs_distance"
_FIELDS = ["object1", "object2"]
PARAPHRASES = {
    QUESTION_TYPE: Paraphrases(
        QUESTION_TYPE,
        Template(
            "Measuring from the closest point of each object, what is the direct distance between the {object1} and "
            "the {object2} (in meters)?",
            _FIELDS,
        ),
        Template(
            "What is the straight-line distance in meters between the {object1} and the {object2}, measured "
            "between the closest points of the two objects?",
            _FIELDS,
        ),
        Template(
            "How far apart, in meters, are the {object1} and the {object2}, measuring directly from the closest "
            "point of each object?",
            _FIELDS,
        ),
    )
}
DEFAULT_CAP = 50
MIN_DISTANCE_M = 0.2


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    items = []
    for pair in shuffled_combinations(graph.unique_categories(), 2, rng):
        if len(items) == cap:
            break
        gt = round(graph.category_distance(*pair), 1)
        if gt < MIN_DISTANCE_M or numeric_distractors(gt, rng, lower=0.25, upper=1.75, decimals=1) is None:
            continue
        first, second = pair if rng.random() < 0.5 else pair[::-1]
        template_id, template = templates.choose(PARAPHRASES[QUESTION_TYPE])
        items.append(
            QAItem(
                QUESTION_TYPE,
                template.format(object1=first, object2=second),
                answer=format_number(gt, 1),
                template=template_id,
            )
        )
    return items
