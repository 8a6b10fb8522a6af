"""VSI-Bench room size (numeric, m^2): the floor area of the scene, one question per scene.

Rule (reference ``get_room_size_qa.py``): ground truth ``round(area_m2, 1)``. The area comes from the
scene's ``room.area_m2`` (the readers compute it: polygon area for synthetic rooms, the reference's
alpha shape of the scan for real ones).
"""

from __future__ import annotations

import numpy as np

from datagen.scene_graph import SceneGraph
from datagen.tasks.common import QAItem, Template, format_number

QUESTION_TYPE = "room_size_estimation"
# The reference template breaks the line after the first sentence; VSI-Bench's text has a space.
TEMPLATE = Template(
    "What is the size of this room (in square meters)? If multiple rooms are shown, estimate the size of the combined space.",
    [],
)
DEFAULT_CAP = 1


def generate(graph: SceneGraph, rng: np.random.Generator, cap: int = DEFAULT_CAP) -> list[QAItem]:
    if cap < 1:
        return []
    return [QAItem(QUESTION_TYPE, TEMPLATE.format(), answer=format_number(graph.scene.room.area_m2, 1))]
