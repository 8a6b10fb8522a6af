"""Extended: one-turn routes (multiple choice, 2 or 3 options): the route questions VSI-Bench never asks.

The benchmark task (:mod:`datagen.tasks.route_planning`) asks routes with 2 to 4 fill-ins, so it has
4 options; most rooms have few such routes that its turn and landmark rules can describe without
ambiguity (synthetic rooms: under one per room). Routes whose description has a single fill-in are
far more common and just as unambiguous: the robot re-orients once at the start and walks straight
to the goal ("1. [please fill in] 2. Go forward until the D."), or it already faces its first leg and
turns once by a landmark ("1. Go forward until the X. 2. [please fill in] 3. Go forward until the D.").

Same planner, same rules, same wording as the benchmark task (:func:`route_planning.plan_routes`,
:data:`route_planning.ROUTE_TEMPLATES`), except:

- exactly one fill-in, so the options are every turn of the same kind: Turn Left and Turn Right,
  plus Turn Back when the fill-in is the re-orientation at the start;
- up to 2 facing objects per (start, destination): two questions on one route whose answers come
  from different starting orientations.
"""

from __future__ import annotations

import numpy as np

from datagen.routing import RoutePlannerChoice
from datagen.scene_graph import SceneGraph
from datagen.tasks.common import OFFICIAL_TEMPLATES, Paraphrases, QAItem, TemplatePicker
from datagen.tasks.route_planning import ROUTE_TEMPLATES, other_turn_sequences, plan_routes, route_question

QUESTION_TYPE = "route_planning_one_turn"
PARAPHRASES = {QUESTION_TYPE: Paraphrases(QUESTION_TYPE, *ROUTE_TEMPLATES)}
DEFAULT_CAP = 10
FACINGS_PER_ROUTE = 2


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
    planner: RoutePlannerChoice = "auto",
) -> list[QAItem]:
    """Up to ``cap`` one-turn route questions, planned by ``planner`` (auto: habitat when it imports)."""
    items: list[QAItem] = []
    for route in plan_routes(graph, rng, cap, planner, fill_ins=(1, 1), facings_per_route=FACINGS_PER_ROUTE):
        template_id, template = templates.choose(PARAPHRASES[QUESTION_TYPE])
        (answer,) = route.turns
        items.append(
            QAItem(
                QUESTION_TYPE,
                route_question(route, template),
                answer=answer,
                choices=(answer, *other_turn_sequences(route)),
                template=template_id,
            )
        )
        if len(items) == cap:
            break
    return items
