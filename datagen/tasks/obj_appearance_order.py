"""VSI-Bench appearance order (multiple choice): the order in which 4 categories first appear.

Rule (reference ``get_spatial_temporal_appearance_order_qa.py``): a category's first appearance is
the first *sampled* frame (of the K the model sees) in which any of its instances is visible, at
``t = frame index / fps``; 4 categories are asked only when their first appearances are pairwise
more than 1 s apart (the reference compared whole seconds, so it needed 2 s in practice). The
question lists the 4 categories in random order; the answer is them sorted by first appearance,
and the 3 distractors are other orders.
"""

from __future__ import annotations

import numpy as np

from datagen.scene_graph import SceneGraph
from datagen.tasks.common import (
    CHOICE_FIELDS,
    OFFICIAL_TEMPLATES,
    Paraphrases,
    QAItem,
    Template,
    TemplatePicker,
    shuffled_combinations,
)

QUESTION_TYPE = "obj_appearance_order"
PARAPHRASES = {
    QUESTION_TYPE: Paraphrases(
        QUESTION_TYPE,
        Template(
            "What will be the first-time appearance order of the following categories in the video: "
            "{choice_a}, {choice_b}, {choice_c}, {choice_d}?",
            CHOICE_FIELDS,
        ),
        Template(
            "In which order do the following categories first appear in the video: "
            "{choice_a}, {choice_b}, {choice_c}, {choice_d}?",
            CHOICE_FIELDS,
        ),
        Template(
            "Order these categories by the time each is first seen in the video: "
            "{choice_a}, {choice_b}, {choice_c}, {choice_d}.",
            CHOICE_FIELDS,
        ),
    )
}
DEFAULT_CAP = 10
MIN_GAP_S = 1.0
NUM_CATEGORIES = 4


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    first = {c: frame.timestamp for c, frame in graph.first_appearances().items()}
    items = []
    for combo in shuffled_combinations(sorted(first), NUM_CATEGORIES, rng):
        if len(items) == cap:
            break
        order = sorted(combo, key=first.get)
        if any(first[b] - first[a] <= MIN_GAP_S for a, b in zip(order, order[1:], strict=False)):
            continue
        answer = ", ".join(order)
        distractors: list[str] = []
        for _ in range(100):
            if len(distractors) == 3:
                break
            candidate = ", ".join(order[i] for i in rng.permutation(NUM_CATEGORIES))
            if candidate != answer and candidate not in distractors:
                distractors.append(candidate)
        asked = [combo[i] for i in rng.permutation(NUM_CATEGORIES)]
        template_id, template = templates.choose(PARAPHRASES[QUESTION_TYPE])
        question = template.format(**dict(zip(CHOICE_FIELDS, asked, strict=True)))
        items.append(
            QAItem(
                QUESTION_TYPE, question, answer=answer, choices=(answer, *distractors), template=template_id
            )
        )
    return items
