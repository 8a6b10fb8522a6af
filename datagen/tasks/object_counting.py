"""VSI-Bench object counting (numeric): how many instances of a category the room holds.

Rule (reference ``get_obj_count_qa.py``): every category with at least 2 instances; the ground truth
is the instance count. Categories with one instance are not asked (the answer would always be 1).
"""

from __future__ import annotations

import numpy as np

from datagen.scene_graph import SceneGraph
from datagen.tasks.common import QAItem, Template

QUESTION_TYPE = "object_counting"
TEMPLATE = Template("How many {category}(s) are in this room?", ["category"])
DEFAULT_CAP = 10


def generate(graph: SceneGraph, rng: np.random.Generator, cap: int = DEFAULT_CAP) -> list[QAItem]:
    categories = sorted(c for c, n in graph.category_counts.items() if n >= 2)
    picked = [categories[i] for i in rng.permutation(len(categories))[:cap]]
    return [
        QAItem(QUESTION_TYPE, TEMPLATE.format(category=c), answer=str(graph.category_counts[c]))
        for c in sorted(picked)
    ]
