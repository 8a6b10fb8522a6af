"""VSI-Bench relative direction (multiple choice): hard = quadrants, medium = left/right/back, easy = left/right.

"Standing by P and facing O, where is Q?" Rule (reference ``get_obj_rel_direction_v1/v2/v3_qa.py``),
on the floor plane (XY, Z up):

- P, O, Q are scene-unique categories whose pairwise closest-point distances all lie in [0.3, 5] m;
  each triple (a, b, c) is asked in the roles (a, b, c), (a, c, b) and (b, a, c).
- f = O - P and q = X - P (centres), theta = counter-clockwise angle from f to q in [0, 360)
  (0..180 is the left-hand side).
- hard: [0, 90) front-left, [90, 180) back-left, [180, 270) back-right, [270, 360) front-right;
  medium: [0, 135) left, [135, 225) back, [225, 360) right; easy: as medium, "back" not asked.
- Dropped as ambiguous: theta within 10 degrees of a sector boundary (on both sides of every
  boundary; the reference guarded only the upper edge of each quadrant), or more than 2 of the 8
  corners of Q's box in another sector than its centre.
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
    ccw_angle_deg,
    spread_triples,
)

_ROLES = "If I am standing by the {positioning_object} and facing the {orienting_object}, is the {querying_object} "
_FIELDS = ["positioning_object", "orienting_object", "querying_object"]
HARD, MEDIUM, EASY = "object_rel_direction_hard", "object_rel_direction_medium", "object_rel_direction_easy"
_ROLES_2 = "I am standing by the {positioning_object}, facing the {orienting_object}. "
PARAPHRASES = {
    HARD: Paraphrases(
        HARD,
        Template(
            _ROLES
            + "to my front-left, front-right, back-left, or back-right? The directions refer to the quadrants of "
            "a Cartesian plane (if I am standing at the origin and facing along the positive y-axis).",
            _FIELDS,
        ),
        Template(
            _ROLES_2 + "In which quadrant is the {querying_object}: front-left, front-right, back-left, or "
            "back-right? The quadrants are those of a Cartesian plane with me at the origin, facing along the "
            "positive y-axis.",
            _FIELDS,
        ),
        Template(
            "Imagine standing by the {positioning_object} and facing the {orienting_object}, at the origin of a "
            "Cartesian plane and looking along its positive y-axis. Is the {querying_object} in the front-left, "
            "front-right, back-left, or back-right quadrant?",
            _FIELDS,
        ),
    ),
    MEDIUM: Paraphrases(
        MEDIUM,
        Template(
            _ROLES
            + "to my left, right, or back? An object is to my back if I would have to turn at least 135 degrees "
            "in order to face it.",
            _FIELDS,
        ),
        Template(
            _ROLES_2
            + "Is the {querying_object} to my left, to my right, or to my back? It is to my back if I "
            "would need to turn by 135 degrees or more to face it.",
            _FIELDS,
        ),
        Template(
            "Imagine standing by the {positioning_object} and facing the {orienting_object}. Is the "
            "{querying_object} on your left, on your right, or at your back (you would have to turn at least 135 "
            "degrees to face it)?",
            _FIELDS,
        ),
    ),
    EASY: Paraphrases(
        EASY,
        Template(_ROLES + "to the left or the right of the {orienting_object}?", _FIELDS),
        Template(
            _ROLES_2 + "Is the {querying_object} to the left or to the right of the {orienting_object}?",
            _FIELDS,
        ),
        Template(
            "Imagine standing by the {positioning_object} and facing the {orienting_object}. Do you see the "
            "{querying_object} to the left or to the right of the {orienting_object}?",
            _FIELDS,
        ),
    ),
}
CHOICES = {
    HARD: ("front-left", "front-right", "back-left", "back-right"),
    MEDIUM: ("left", "right", "back"),
    EASY: ("left", "right"),
}
# Sector edges (degrees, counter-clockwise from "forward") and the label of each sector.
_SECTORS = {
    HARD: (
        np.array([0.0, 90.0, 180.0, 270.0, 360.0]),
        ("front-left", "back-left", "back-right", "front-right"),
    ),
    MEDIUM: (np.array([0.0, 135.0, 225.0, 360.0]), ("left", "back", "right")),
    EASY: (np.array([0.0, 135.0, 225.0, 360.0]), ("left", "back", "right")),
}
DEFAULT_CAP = 20
MIN_PAIR_M, MAX_PAIR_M = 0.30, 5.0
BOUNDARY_MARGIN_DEG = 10.0
MAX_CORNERS_OFF = 2


def direction_label(question_type: str, theta_deg: np.ndarray) -> np.ndarray:
    """Sector labels for angles in [0, 360) (counter-clockwise from forward)."""
    edges, labels = _SECTORS[question_type]
    return np.asarray(labels)[np.searchsorted(edges, theta_deg, side="right") - 1]


def classify(
    graph: SceneGraph, question_type: str, positioning: str, orienting: str, querying: str
) -> str | None:
    """The answer for one role assignment, or None when the rule calls it ambiguous."""
    p = graph.unique_instance(positioning).center[:2]
    forward = graph.unique_instance(orienting).center[:2] - p
    q = graph.unique_instance(querying)
    if np.linalg.norm(forward) < 1e-6:
        return None
    theta = float(ccw_angle_deg(forward, q.center[:2] - p))
    edges, _ = _SECTORS[question_type]
    if np.min(np.abs(theta - edges)) < BOUNDARY_MARGIN_DEG:
        return None
    label = str(direction_label(question_type, np.array(theta)))
    corner_labels = direction_label(question_type, ccw_angle_deg(forward, q.corners[:, :2] - p))
    if np.sum(corner_labels != label) > MAX_CORNERS_OFF:
        return None
    if label not in CHOICES[question_type]:  # easy: "back" is not asked
        return None
    return label


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    items: list[QAItem] = []
    kept = dict.fromkeys(PARAPHRASES, 0)
    for a, b, c in spread_triples(graph, rng, MIN_PAIR_M, MAX_PAIR_M):
        if all(n >= cap for n in kept.values()):
            break
        for roles in ((a, b, c), (a, c, b), (b, a, c)):
            for question_type, paraphrases in PARAPHRASES.items():
                if kept[question_type] >= cap:
                    continue
                label = classify(graph, question_type, *roles)
                if label is None:
                    continue
                template_id, template = templates.choose(paraphrases)
                question = template.format(**dict(zip(_FIELDS, roles, strict=True)))
                items.append(
                    QAItem(
                        question_type,
                        question,
                        answer=label,
                        choices=CHOICES[question_type],
                        template=template_id,
                    )
                )
                kept[question_type] += 1
    return items
