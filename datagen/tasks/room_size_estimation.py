"""VSI-Bench room size (numeric, m^2): the floor area of the scene, one question per scene.

Rule (reference ``get_room_size_qa.py``): ground truth ``round(area_m2, 1)``. The area comes from the
scene's ``room.area_m2`` (the readers compute it: polygon area for synthetic rooms, the reference's
alpha shape of the scan for real ones).
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
    format_number,
)

QUESTION_TYPE = "room_size_estimation"
# The reference template breaks the line after the first sentence; VSI-Bench's text has a space.
PARAPHRASES = {
    QUESTION_TYPE: Paraphrases(
        QUESTION_TYPE,
        Template(
            "What is the size of this room (in square meters)? If multiple rooms are shown, estimate the size of "
            "the combined space.",
            [],
        ),
        Template(
            "How large is this room, in square meters? If the video shows several rooms, give the size of the "
            "combined space.",
            [],
        ),
        Template(
            "Estimate the floor area of this room in square meters. If more than one room is shown, estimate the "
            "area of the combined space.",
            [],
        ),
    )
}
DEFAULT_CAP = 1


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    if cap < 1:
        return []
    template_id, template = templates.choose(PARAPHRASES[QUESTION_TYPE])
    return [
        QAItem(
            QUESTION_TYPE,
            template.format(),
            answer=format_number(graph.scene.room.area_m2, 1),
            template=template_id,
        )
    ]
