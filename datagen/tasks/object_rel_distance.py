"""VSI-Bench relative distance (multiple choice, 4/3/2 choices): which category is closest to a unique one.

Rule (reference ``get_obj_rel_distance_v1/v2/v3_qa.py``): the primary object is scene-unique; the
choices are 4, 3 or 2 other categories (unique or not); the distance of a choice is the smallest
closest-point distance over its instances. Dropped: the nearest choice is under 0.15 m away
(it touches the primary), or two choice distances differ by at most tau, with tau = 0.30 m in rooms
over 40 m^2 and 0.15 m otherwise (the reference computed this room-adaptive tau for all three
variants but used it only for 3 and 2 choices). Answer: the nearest choice.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

from datagen.scene_graph import SceneGraph
from datagen.tasks.common import OFFICIAL_TEMPLATES, QAItem, TemplatePicker, paraphrases_by_choice_count

_TEXTS = (  # official first; {choices} is the list of choice placeholders
    "Measuring from the closest point of each object, which of these objects ({choices}) is the closest to the "
    "{{category}}? If there are multiple instances of an object category, measure to the closest.",
    "Which of these objects ({choices}) is nearest to the {{category}}, measuring between the closest points of "
    "the objects? For a category with several instances, use the nearest one.",
    "Of these objects ({choices}), which one is closest to the {{category}}? Measure from the closest point of "
    "each object, and to the closest instance when a category has several.",
)
VARIANTS = {  # question_type -> number of choices
    "object_rel_distance": 4,
    "object_rel_distance_v2": 3,
    "object_rel_distance_v3": 2,
}
PARAPHRASES = paraphrases_by_choice_count(_TEXTS, VARIANTS, ["category"])
DEFAULT_CAP = 20
MIN_NEAREST_M = 0.15
LARGE_ROOM_M2 = 40.0


def ambiguity_margin(room_area_m2: float) -> float:
    """Two choices closer than this (metres) in distance make the question ambiguous."""
    return 0.30 if room_area_m2 > LARGE_ROOM_M2 else 0.15


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    uniques = graph.unique_categories()
    categories = sorted(graph.category_counts)
    tau = ambiguity_margin(graph.scene.room.area_m2)
    items = []
    for question_type, n in VARIANTS.items():
        if len(categories) < n + 1 or not uniques:
            continue
        seen: set[tuple] = set()
        possible = len(uniques) * math.comb(len(categories) - 1, n)
        kept = 0
        for _ in range(50 * cap):
            if kept == cap or len(seen) == possible:
                break
            primary = uniques[rng.integers(len(uniques))]
            others = [c for c in categories if c != primary]
            picks = tuple(sorted(others[i] for i in rng.choice(len(others), size=n, replace=False)))
            if (primary, picks) in seen:
                continue
            seen.add((primary, picks))
            distances = np.array([graph.category_distance(primary, c) for c in picks])
            if distances.min() < MIN_NEAREST_M:
                continue
            if any(abs(a - b) <= tau for a, b in combinations(distances, 2)):
                continue
            template_id, template = templates.choose(PARAPHRASES[question_type])
            items.append(
                QAItem(
                    question_type,
                    template.format_keeping_choices(category=primary),
                    answer=picks[int(np.argmin(distances))],
                    choices=picks,
                    choices_in_question=True,
                    template=template_id,
                )
            )
            kept += 1
    return items
