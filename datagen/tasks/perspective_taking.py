"""Extended: perspective taking (2 choices): standing at A facing B, is C left or right / in front or behind?

"Imagine you stand at the bed and face the tv. Is the sofa on your left or on your right?" and "... Is
the sofa in front of you or behind you?" VSI-Bench's relative direction asks quadrants and
left/right/back; these ask each axis of the imagined body frame on its own, front/behind included,
with stricter margins.

Rule, on the floor plane (world XY, Z up):

- A, B, C are distinct scene-unique categories whose pairwise closest-point distances lie in
  [0.3, 5] m, and A's and B's centres are at least 0.5 m apart;
- f = B - A (centres), theta = counter-clockwise angle from f to C - A in [0, 360) (0..180 is the
  left-hand side);
- ``perspective_taking_lr``: left when 15 <= theta <= 165, right when 195 <= theta <= 345, and every
  corner of C's box on the same side of the line through A along f;
- ``perspective_taking_fb``: front when theta <= 75 or theta >= 285, behind when 105 <= theta <= 255,
  and every corner of C's box on the same side of the line through A across f;
- other angles (within 15 degrees of an axis) are not asked.

Each triple of categories (in random order) gives at most one question per variant, for the first
of its 6 role assignments (in random order) the rule can answer.
"""

from __future__ import annotations

from itertools import permutations

import numpy as np

from datagen.scene_graph import SceneGraph
from datagen.tasks.common import (
    OFFICIAL_TEMPLATES,
    Paraphrases,
    QAItem,
    Template,
    TemplatePicker,
    ccw_angle_deg,
    spread_triples,
)

LEFT_RIGHT, FRONT_BEHIND = "perspective_taking_lr", "perspective_taking_fb"
_FIELDS = ["positioning_object", "orienting_object", "querying_object"]
PARAPHRASES = {
    LEFT_RIGHT: Paraphrases(
        LEFT_RIGHT,
        Template(
            "Imagine you are standing at the {positioning_object} and facing the {orienting_object}. Is the "
            "{querying_object} on your left or on your right?",
            _FIELDS,
        ),
        Template(
            "You stand at the {positioning_object}, looking towards the {orienting_object}. Is the "
            "{querying_object} to your left or to your right?",
            _FIELDS,
        ),
        Template(
            "From the position of the {positioning_object}, facing the {orienting_object}, is the "
            "{querying_object} on the left side or on the right side?",
            _FIELDS,
        ),
    ),
    FRONT_BEHIND: Paraphrases(
        FRONT_BEHIND,
        Template(
            "Imagine you are standing at the {positioning_object} and facing the {orienting_object}. Is the "
            "{querying_object} in front of you or behind you?",
            _FIELDS,
        ),
        Template(
            "You stand at the {positioning_object}, looking towards the {orienting_object}. Is the "
            "{querying_object} in front of you or behind you?",
            _FIELDS,
        ),
        Template(
            "From the position of the {positioning_object}, facing the {orienting_object}, is the "
            "{querying_object} ahead of you (front) or behind you?",
            _FIELDS,
        ),
    ),
}
CHOICES = {LEFT_RIGHT: ("left", "right"), FRONT_BEHIND: ("front", "behind")}
DEFAULT_CAP = 10
MIN_PAIR_M, MAX_PAIR_M = 0.30, 5.0
MIN_FACING_M = 0.5
AXIS_MARGIN_DEG = 15.0


def classify(
    graph: SceneGraph, question_type: str, positioning: str, orienting: str, querying: str
) -> str | None:
    """The answer for one role assignment, or None when the rule calls it ambiguous."""
    p = graph.unique_instance(positioning).center[:2]
    forward = graph.unique_instance(orienting).center[:2] - p
    if np.linalg.norm(forward) < MIN_FACING_M:
        return None
    q = graph.unique_instance(querying)
    theta = float(ccw_angle_deg(forward, q.center[:2] - p))
    offsets = q.corners[:, :2] - p  # (8, 2)
    m = AXIS_MARGIN_DEG
    if question_type == LEFT_RIGHT:
        side = forward[0] * offsets[:, 1] - forward[1] * offsets[:, 0]  # (8,) > 0 on the left
        if m <= theta <= 180 - m and np.all(side > 0):
            return "left"
        if 180 + m <= theta <= 360 - m and np.all(side < 0):
            return "right"
        return None
    ahead = offsets @ forward  # (8,) > 0 in front
    if (theta <= 90 - m or theta >= 270 + m) and np.all(ahead > 0):
        return "front"
    if 90 + m <= theta <= 270 - m and np.all(ahead < 0):
        return "behind"
    return None


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    items: list[QAItem] = []
    kept = dict.fromkeys(PARAPHRASES, 0)
    for triple in spread_triples(graph, rng, MIN_PAIR_M, MAX_PAIR_M):
        if all(n >= cap for n in kept.values()):
            break
        roles = list(permutations(triple))
        order = rng.permutation(len(roles))
        for question_type, paraphrases in PARAPHRASES.items():
            if kept[question_type] >= cap:
                continue
            for r in order:
                label = classify(graph, question_type, *roles[r])
                if label is None:
                    continue
                template_id, template = templates.choose(paraphrases)
                items.append(
                    QAItem(
                        question_type,
                        template.format(**dict(zip(_FIELDS, roles[r], strict=True))),
                        answer=label,
                        choices=CHOICES[question_type],
                        template=template_id,
                    )
                )
                kept[question_type] += 1
                break
    return items
