"""VSI-Bench object size (numeric, cm): the longest side of a scene-unique object's box.

Rule (reference ``get_obj_size_qa.py``): categories with exactly one instance; ground truth
``round(100 * max(extent))`` centimetres; kept only when the reference's numeric distractors
(U[0.4 gt, 1.8 gt], whole numbers) can be drawn.
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
)

QUESTION_TYPE = "object_size_estimation"
PARAPHRASES = {
    QUESTION_TYPE: Paraphrases(
        QUESTION_TYPE,
        Template(
            "What is the length of the longest dimension (length, width, or height) of the {category}, measured in "
            "centimeters?",
            ["category"],
        ),
        Template(
            "How long, in centimeters, is the longest side (length, width, or height) of the {category}?",
            ["category"],
        ),
        Template(
            "Measured in centimeters, what is the largest of the three dimensions (length, width, height) of the "
            "{category}?",
            ["category"],
        ),
    )
}
DEFAULT_CAP = 10


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    items = []
    categories = graph.unique_categories()
    for i in rng.permutation(len(categories)):
        if len(items) == cap:
            break
        category = categories[i]
        size_cm = round(100 * float(np.max(graph.unique_instance(category).extent)))
        if numeric_distractors(size_cm, rng, lower=0.4, upper=1.8, decimals=0) is None:
            continue
        template_id, template = templates.choose(PARAPHRASES[QUESTION_TYPE])
        items.append(
            QAItem(
                QUESTION_TYPE,
                template.format(category=category),
                answer=format_number(size_cm, 0),
                template=template_id,
            )
        )
    return items
