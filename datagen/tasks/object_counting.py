"""VSI-Bench object counting (numeric): how many instances of a category the room holds.

Rule (reference ``get_obj_count_qa.py``): every category with at least 2 instances; the ground truth
is the instance count. Categories with one instance are not asked (the answer would always be 1).
"""

from __future__ import annotations

import numpy as np

from datagen.scene_graph import SceneGraph
from datagen.tasks.common import OFFICIAL_TEMPLATES, Paraphrases, QAItem, Template, TemplatePicker

QUESTION_TYPE = "object_counting"
PARAPHRASES = {
    QUESTION_TYPE: Paraphrases(
        QUESTION_TYPE,
        Template("How many {category}(s) are in this room?", ["category"]),
        Template("Count the {category}(s) in this room. How many are there?", ["category"]),
        Template("What is the number of {category}(s) in the room?", ["category"]),
    )
}
DEFAULT_CAP = 10


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    categories = sorted(c for c, n in graph.category_counts.items() if n >= 2)
    picked = [categories[i] for i in rng.permutation(len(categories))[:cap]]
    items = []
    for c in sorted(picked):
        template_id, template = templates.choose(PARAPHRASES[QUESTION_TYPE])
        items.append(
            QAItem(
                QUESTION_TYPE,
                template.format(category=c),
                answer=str(graph.category_counts[c]),
                template=template_id,
            )
        )
    return items
