"""VSI-Bench object size (numeric, cm): the longest side of a scene-unique object's box.

Rule (reference ``get_obj_size_qa.py``): categories with exactly one instance; ground truth
``round(100 * max(extent))`` centimetres; kept only when the reference's numeric distractors
(U[0.4 gt, 1.8 gt], whole numbers) can be drawn.
"""

from __future__ import annotations

import numpy as np

from datagen.scene_graph import SceneGraph
from datagen.tasks.common import QAItem, Template, format_number, numeric_distractors

QUESTION_TYPE = "object_size_estimation"
TEMPLATE = Template(
    "What is the length of the longest dimension (length, width, or height) of the {category}, measured in centimeters?",
    ["category"],
)
DEFAULT_CAP = 10


def generate(graph: SceneGraph, rng: np.random.Generator, cap: int = DEFAULT_CAP) -> list[QAItem]:
    items = []
    categories = graph.unique_categories()
    for i in rng.permutation(len(categories)):
        if len(items) == cap:
            break
        category = categories[i]
        size_cm = round(100 * float(np.max(graph.unique_instance(category).extent)))
        if numeric_distractors(size_cm, rng, lower=0.4, upper=1.8, decimals=0) is None:
            continue
        items.append(
            QAItem(QUESTION_TYPE, TEMPLATE.format(category=category), answer=format_number(size_cm, 0))
        )
    return items
