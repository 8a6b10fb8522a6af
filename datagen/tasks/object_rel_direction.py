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
from datagen.tasks.common import QAItem, Template, ccw_angle_deg, shuffled_combinations

_ROLES = "If I am standing by the {positioning_object} and facing the {orienting_object}, is the {querying_object} "
_FIELDS = ["positioning_object", "orienting_object", "querying_object"]
HARD, MEDIUM, EASY = "object_rel_direction_hard", "object_rel_direction_medium", "object_rel_direction_easy"
TEMPLATES = {
    HARD: Template(
        _ROLES
        + "to my front-left, front-right, back-left, or back-right? The directions refer to the quadrants of "
        "a Cartesian plane (if I am standing at the origin and facing along the positive y-axis).",
        _FIELDS,
    ),
    MEDIUM: Template(
        _ROLES
        + "to my left, right, or back? An object is to my back if I would have to turn at least 135 degrees "
        "in order to face it.",
        _FIELDS,
    ),
    EASY: Template(_ROLES + "to the left or the right of the {orienting_object}?", _FIELDS),
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


def generate(graph: SceneGraph, rng: np.random.Generator, cap: int = DEFAULT_CAP) -> list[QAItem]:
    items: list[QAItem] = []
    kept = dict.fromkeys(TEMPLATES, 0)
    for a, b, c in shuffled_combinations(graph.unique_categories(), 3, rng):
        if all(n >= cap for n in kept.values()):
            break
        pair_distances = [graph.category_distance(x, y) for x, y in ((a, b), (a, c), (b, c))]
        if not all(MIN_PAIR_M <= d <= MAX_PAIR_M for d in pair_distances):
            continue
        for roles in ((a, b, c), (a, c, b), (b, a, c)):
            for question_type, template in TEMPLATES.items():
                if kept[question_type] >= cap:
                    continue
                label = classify(graph, question_type, *roles)
                if label is None:
                    continue
                question = template.format(**dict(zip(_FIELDS, roles, strict=True)))
                items.append(QAItem(question_type, question, answer=label, choices=CHOICES[question_type]))
                kept[question_type] += 1
    return items
