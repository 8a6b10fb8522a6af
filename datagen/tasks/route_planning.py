"""VSI-Bench route planning (multiple choice, 4 options): fill in the turns of a described route.

"You are a robot beginning at the S facing the F. You want to navigate to the D. ... 1. [please fill
in] 2. Go forward until the X. 3. [please fill in] 4. Go forward until the D. You have reached the
final destination." The reference never released its generator (it came from a Habitat simulator);
this one plans on the scene geometry with a :class:`~datagen.routing.RoutePlanner`: habitat-sim's
navmesh when ``habitat_sim`` imports (:mod:`datagen.routing.habitat`), else the built-in exact planner
(:mod:`datagen.routing.builtin`); ``planner`` picks one (``"auto"``, ``"builtin"``, ``"habitat"``).

- S, F, D are distinct scene-unique categories; the robot starts beside S (the walkable point
  nearest to S's centre, at most 0.6 m from its footprint; of equally near sides, the one towards
  D) facing F's centre; the goal is beside D (of equally near sides, the one towards S).
- The route is the exact shortest walkable path, simplified (10 cm); routes under 1 m are not asked,
  nor routes with a near-equal alternative: a way that passes some free-standing obstacle on the
  other side and is at most 20 % longer (a table in the middle of the room, start and goal on
  either side) would make the turns ambiguous.
- Turns are classified with a rejection band so every label is unambiguous. The heading change is
  measured from the heading the robot took at its last turn (so a corner followed by another corner
  adds up): at most 20 degrees is "keep going", 40-140 degrees is Turn Left / Turn Right (left =
  counter-clockwise seen from above), at least 160 degrees (only possible before the first leg) is
  Turn Back. A change between 20 and 40 degrees waits for the next corner; if the last leg is still
  more than 20 degrees off, or a change passes 140 degrees, the route is rejected. The first action
  is a fill-in only when the robot must re-orient; start, turn points and goal are 0.5 m apart.
- Each turn point is named by its nearest scene-unique object (footprint distance at most 1 m, and
  0.2 m nearer than the runner-up; not S, not D, not the previous landmark).
- 2 to 4 fill-ins, so there are always 4 distinct options: the answer and 3 other turn sequences
  of the same length (Turn Back only where the robot re-orients). One question per (S, D).

Routes with a single fill-in, which this benchmark task never asks, are the extended family
:mod:`datagen.tasks.route_planning_one_turn`; it shares :func:`plan_routes` and the templates.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import product

import numpy as np
from shapely.geometry import Point

from datagen.routing import RoutePlanner, RoutePlannerChoice, make_route_planner
from datagen.routing.builtin import path_length, signed_turn_deg, simplify_path
from datagen.scene_graph import SceneGraph
from datagen.tasks.common import OFFICIAL_TEMPLATES, Paraphrases, QAItem, Template, TemplatePicker

QUESTION_TYPE = "route_planning"
_FIELDS = ["start_object", "facing_object", "destination_object", "actions"]
# The wordings of a route question, official first (also used by route_planning_one_turn).
ROUTE_TEMPLATES = (
    Template(
        "You are a robot beginning at the {start_object} facing the {facing_object}. You want to navigate to the "
        "{destination_object}. You will perform the following actions (Note: for each [please fill in], choose "
        "either 'turn back,' 'turn left,' or 'turn right.'): {actions}",
        _FIELDS,
    ),
    Template(
        "Imagine you are a robot that starts at the {start_object}, facing the {facing_object}, and has to reach "
        "the {destination_object}. Your actions are listed below; replace each [please fill in] with 'turn back,' "
        "'turn left,' or 'turn right.': {actions}",
        _FIELDS,
    ),
    Template(
        "A robot begins at the {start_object} facing the {facing_object} and navigates to the "
        "{destination_object} with these actions (each [please fill in] is one of 'turn back,' 'turn left,' or "
        "'turn right.'): {actions}",
        _FIELDS,
    ),
)
PARAPHRASES = {QUESTION_TYPE: Paraphrases(QUESTION_TYPE, *ROUTE_TEMPLATES)}
FILL_IN = "[please fill in]"
TURN_LEFT, TURN_RIGHT, TURN_BACK = "Turn Left", "Turn Right", "Turn Back"
DEFAULT_CAP = 5
STRAIGHT_MAX_DEG = 20.0
TURN_MIN_DEG, TURN_MAX_DEG = 40.0, 140.0
BACK_MIN_DEG = 160.0
MAX_APPROACH_M = 0.6
ALTERNATIVE_MARGIN = 0.2  # a way round on the other side of an obstacle at most 20 % longer: ambiguous
MIN_FACING_M = 0.5
MIN_ROUTE_M = 1.0
MIN_LEG_M = 0.5
LANDMARK_MAX_M = 1.0
LANDMARK_MARGIN_M = 0.2
MAX_PAIRS_PER_QUESTION = 20  # (start, destination) pairs planned per wanted question
MIN_FILL_INS, MAX_FILL_INS = 2, 4


@dataclass(frozen=True)
class Route:
    """A described route.

    Attributes:
        path: (P, 2) simplified walkable path in world XY, start to goal.
        actions: the numbered action text of the question.
        turns: the fill-in answers in order (``"Turn Left"``...).
        reorients: the first fill-in is the re-orientation before the first leg.
    """

    start: str
    facing: str
    destination: str
    path: np.ndarray
    actions: str
    turns: tuple[str, ...]
    reorients: bool


def classify_turn(angle_deg: float, initial: bool) -> str | None:
    """A turn label, ``""`` for no turn, or None for an ambiguous heading change.

    ``initial`` (re-orienting from the facing direction onto the first leg): up to 20 degrees no
    turn, 40-140 left/right, from 160 back. Along the path: under 40 degrees no turn yet (bends add
    up until a later corner; the caller rejects a route whose last leg is still off by more than
    20), 40-140 left/right, beyond 140 ambiguous.
    """
    magnitude = abs(angle_deg)
    if TURN_MIN_DEG <= magnitude <= TURN_MAX_DEG:
        return TURN_LEFT if angle_deg > 0 else TURN_RIGHT
    if not initial:
        return "" if magnitude < TURN_MIN_DEG else None
    if magnitude <= STRAIGHT_MAX_DEG:
        return ""
    return TURN_BACK if magnitude >= BACK_MIN_DEG else None


def landmark(graph: SceneGraph, plan: RoutePlanner, point_xy: np.ndarray, excluded: set[str]) -> str | None:
    """The scene-unique category clearly nearest to a turn point, or None."""
    point = Point(point_xy)
    ranked = sorted(
        (plan.footprints[graph.unique_instance(c).instance_id].distance(point), c)
        for c in graph.unique_categories()
    )
    if not ranked or ranked[0][0] > LANDMARK_MAX_M or ranked[0][1] in excluded:
        return None
    if len(ranked) > 1 and ranked[1][0] - ranked[0][0] < LANDMARK_MARGIN_M:
        return None
    return ranked[0][1]


def plan_route(graph: SceneGraph, plan: RoutePlanner, start: str, destination: str) -> np.ndarray | None:
    """The simplified shortest walkable path (P, 2) from beside S to beside D, or None (no path, too
    short, or another way round is about as short)."""
    s, d = graph.unique_instance(start), graph.unique_instance(destination)
    begin = plan.approach_point(s.instance_id, toward_xy=d.center[:2])
    end = plan.approach_point(d.instance_id, toward_xy=s.center[:2])
    if begin is None or end is None or begin[1] > MAX_APPROACH_M or end[1] > MAX_APPROACH_M:
        return None
    path = plan.shortest_path(begin[0], end[0])
    if path is None or path_length(path) < MIN_ROUTE_M:
        return None
    if plan.shortest_other_way(path) <= (1 + ALTERNATIVE_MARGIN) * path_length(path):
        return None
    path = simplify_path(path)
    return path if path_length(path) >= MIN_ROUTE_M else None


def describe_route(
    graph: SceneGraph,
    plan: RoutePlanner,
    start: str,
    facing: str,
    destination: str,
    path: np.ndarray,
    fill_ins: tuple[int, int] = (MIN_FILL_INS, MAX_FILL_INS),
) -> Route | None:
    """Describes the planned path S -> D for a robot first facing F, or None when the rules reject it
    (or its number of fill-ins is outside ``fill_ins``, inclusive)."""
    legs = np.diff(path, axis=0)  # (P - 1, 2)
    facing_dir = graph.unique_instance(facing).center[:2] - path[0]
    if np.linalg.norm(facing_dir) < MIN_FACING_M:
        return None

    first = classify_turn(signed_turn_deg(facing_dir, legs[0]), initial=True)
    if first is None:
        return None
    actions = [FILL_IN] if first else []
    turns = [first] if first else []
    waypoints = [path[0]]
    previous = start
    heading = legs[0]  # the heading the robot walks since its last turn
    for k in range(1, len(legs)):
        # "" is keep going, or a bend still under 40 degrees that the next corners may complete.
        turn = classify_turn(signed_turn_deg(heading, legs[k]), initial=False)
        if not turn:
            continue
        name = landmark(graph, plan, path[k], excluded={start, destination, previous})
        if name is None:
            return None
        actions += [f"Go forward until the {name}.", FILL_IN]
        turns.append(turn)
        waypoints.append(path[k])
        previous, heading = name, legs[k]
    if abs(signed_turn_deg(heading, legs[-1])) > STRAIGHT_MAX_DEG:  # the last leg bends without a turn
        return None
    waypoints.append(path[-1])
    if np.min(np.linalg.norm(np.diff(np.stack(waypoints), axis=0), axis=1)) < MIN_LEG_M:
        return None
    actions.append(f"Go forward until the {destination}.")
    if not fill_ins[0] <= len(turns) <= fill_ins[1]:
        return None
    numbered = " ".join(f"{k}. {a}" for k, a in enumerate(actions, 1))
    text = f"{numbered} You have reached the final destination."
    return Route(start, facing, destination, path, text, tuple(turns), reorients=bool(first))


def other_turn_sequences(route: Route) -> list[str]:
    """Every other turn sequence of the same length (Turn Back only where the robot re-orients)."""
    allowed = [
        [TURN_LEFT, TURN_RIGHT, TURN_BACK] if (i == 0 and route.reorients) else [TURN_LEFT, TURN_RIGHT]
        for i in range(len(route.turns))
    ]
    answer = ", ".join(route.turns)
    return [", ".join(seq) for seq in product(*allowed) if ", ".join(seq) != answer]


def turn_distractors(route: Route, rng: np.random.Generator) -> list[str]:
    """3 other turn sequences of the same length (Turn Back only where the robot re-orients)."""
    others = other_turn_sequences(route)
    return [others[i] for i in sorted(rng.choice(len(others), size=3, replace=False))]


def plan_routes(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int,
    planner: RoutePlannerChoice,
    fill_ins: tuple[int, int],
    facings_per_route: int = 1,
) -> Iterator[Route]:
    """Described routes, lazily: (start, destination) pairs of scene-unique categories in random order
    (at most ``MAX_PAIRS_PER_QUESTION * cap`` of them), each planned once and described for up to
    ``facings_per_route`` facing objects (tried in random order) whose description has a number of
    fill-ins in ``fill_ins``. Nothing when the scene has fewer than 3 unique categories or cap < 1."""
    uniques = graph.unique_categories()
    if len(uniques) < 3 or cap < 1:
        return
    plan = make_route_planner(graph.scene, planner)
    pairs = [(s, d) for s in uniques for d in uniques if s != d]
    for p in rng.permutation(len(pairs))[: MAX_PAIRS_PER_QUESTION * cap]:
        start, destination = pairs[p]
        path = plan_route(graph, plan, start, destination)
        if path is None:
            continue
        facings = [c for c in uniques if c not in (start, destination)]
        found = 0
        for f in rng.permutation(len(facings)):
            route = describe_route(graph, plan, start, facings[f], destination, path, fill_ins)
            if route is not None:
                yield route
                found += 1
                if found == facings_per_route:
                    break


def route_question(route: Route, template: Template) -> str:
    """The question text of a described route in one of the :data:`ROUTE_TEMPLATES`."""
    return template.format(
        start_object=route.start,
        facing_object=route.facing,
        destination_object=route.destination,
        actions=route.actions,
    )


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
    planner: RoutePlannerChoice = "auto",
) -> list[QAItem]:
    """Up to ``cap`` route questions, planned by ``planner`` (auto: habitat when it imports), one per
    (start, destination)."""
    items: list[QAItem] = []
    for route in plan_routes(graph, rng, cap, planner, fill_ins=(MIN_FILL_INS, MAX_FILL_INS)):
        template_id, template = templates.choose(PARAPHRASES[QUESTION_TYPE])
        answer = ", ".join(route.turns)
        items.append(
            QAItem(
                QUESTION_TYPE,
                route_question(route, template),
                answer=answer,
                choices=(answer, *turn_distractors(route, rng)),
                template=template_id,
            )
        )
        if len(items) == cap:
            break
    return items
