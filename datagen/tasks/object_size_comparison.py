"""Extended: size comparison (multiple choice, 3 options): which object is tallest / largest / longest.

"Which of these objects (bed, lamp, tv) is the tallest, measured from its own bottom to its own top?"
The options are 3 scene-unique categories; each is measured on its oriented box (metres):

- ``object_height_comparison``: height, the vertical extent of the box (its own height, not how
  high it stands: a lamp on a table is not taller than the table because it stands on it);
- ``object_volume_comparison``: volume, the product of the box's three extents (m^3);
- ``object_length_comparison``: longest side, the largest of the three extents (what
  ``object_size_estimation`` asks for one object).

The answer is the option with the largest measure. Near-ties are skipped: the answer must exceed
every other option by the relative margin *and* the absolute one: 15 % and 0.10 m for height and
longest side; 50 % (about 15 % in each dimension) and 0.01 m^3 for volume. Absolute margins keep
annotation noise on small objects from deciding the answer.
"""

from __future__ import annotations

import numpy as np

from datagen.scene_graph import InstanceNode, SceneGraph
from datagen.tasks.common import (
    OFFICIAL_TEMPLATES,
    QAItem,
    TemplatePicker,
    paraphrases_by_choice_count,
    shuffled_combinations,
)

HEIGHT, VOLUME, LENGTH = "object_height_comparison", "object_volume_comparison", "object_length_comparison"
NUM_CHOICES = 3
_TEXTS = {
    HEIGHT: (
        "Which of these objects ({choices}) is the tallest, measured from its own bottom to its own top?",
        "Of these objects ({choices}), which one has the greatest height from its bottom to its top (not how "
        "high it stands)?",
        "Comparing the height of each object from its own bottom to its own top, which of these objects "
        "({choices}) is the tallest?",
    ),
    VOLUME: (
        "Which of these objects ({choices}) is the largest in volume?",
        "Of these objects ({choices}), which one takes up the most space, that is, has the largest volume?",
        "Comparing their volumes, which of these objects ({choices}) is the biggest?",
    ),
    LENGTH: (
        "Which of these objects ({choices}) has the longest side (length, width, or height)?",
        "Of these objects ({choices}), which one has the largest single dimension (length, width, or height)?",
        "Comparing the longest dimension (length, width, or height) of each object, which of these objects "
        "({choices}) is the largest?",
    ),
}
PARAPHRASES = {
    qt: paraphrases_by_choice_count(texts, {qt: NUM_CHOICES}, [])[qt] for qt, texts in _TEXTS.items()
}
# question type -> (relative margin, absolute margin in metres or m^3)
MARGINS = {HEIGHT: (0.15, 0.10), VOLUME: (0.50, 0.01), LENGTH: (0.15, 0.10)}
DEFAULT_CAP = 10


def measure(question_type: str, node: InstanceNode) -> float:
    """Height (m), volume (m^3) or longest side (m) of an object's box."""
    if question_type == HEIGHT:
        return float(np.ptp(node.corners[:, 2]))
    if question_type == VOLUME:
        return float(np.prod(node.extent))
    return float(np.max(node.extent))


def largest(question_type: str, nodes: list[InstanceNode]) -> InstanceNode | None:
    """The option whose measure clearly exceeds every other one (both margins), or None."""
    values = [measure(question_type, n) for n in nodes]
    best = int(np.argmax(values))
    relative, absolute = MARGINS[question_type]
    for k, v in enumerate(values):
        if k != best and (values[best] < (1 + relative) * v or values[best] - v < absolute):
            return None
    return nodes[best]


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    items: list[QAItem] = []
    kept = dict.fromkeys(PARAPHRASES, 0)
    for combo in shuffled_combinations(graph.unique_categories(), NUM_CHOICES, rng):
        if all(n >= cap for n in kept.values()):
            break
        nodes = [graph.unique_instance(c) for c in combo]
        for question_type, paraphrases in PARAPHRASES.items():
            if kept[question_type] >= cap:
                continue
            answer = largest(question_type, nodes)
            if answer is None:
                continue
            template_id, template = templates.choose(paraphrases)
            items.append(
                QAItem(
                    question_type,
                    template.format_keeping_choices(),
                    answer=answer.category,
                    choices=tuple(combo),
                    choices_in_question=True,
                    template=template_id,
                )
            )
            kept[question_type] += 1
    return items
