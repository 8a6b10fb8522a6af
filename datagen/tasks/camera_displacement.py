"""VSTI-Bench camera displacement (numeric, m): straight-line distance between two camera centres.

Rule (reference ``get_camera_displacement_qa.py``, camera-centre bug fixed): random pairs of sampled
frames i < j, 5 <= j - i <= 30 apart in sampled-frame rank, at most ``max(cap, min(20 cap, 200))``
draws; ground truth ``round(|t_j - t_i|, 1)`` kept when 0.2 <= gt <= 10 m (net displacement, not path
length).
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

QUESTION_TYPE = "camera_displacement"
_FIELDS = ["start_frame_description", "end_frame_description"]
PARAPHRASES = {
    QUESTION_TYPE: Paraphrases(
        QUESTION_TYPE,
        Template(
            "Approximately how far (in meters) did the camera move between {start_frame_description} and "
            "{end_frame_description}?",
            _FIELDS,
        ),
        Template(
            "What is the approximate straight-line distance (in meters) between the camera's position at "
            "{start_frame_description} and its position at {end_frame_description}?",
            _FIELDS,
        ),
        Template(
            "Roughly how many meters apart are the camera's positions at {start_frame_description} and at "
            "{end_frame_description}?",
            _FIELDS,
        ),
    )
}
DEFAULT_CAP = 10
MIN_RANK_GAP, MAX_RANK_GAP = 5, 30
MIN_M, MAX_M = 0.2, 10.0


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    frames = graph.frames
    pairs = [
        (a, b)
        for a in range(len(frames))
        for b in range(a + 1, len(frames))
        if MIN_RANK_GAP <= frames[b].rank - frames[a].rank <= MAX_RANK_GAP
    ]
    items: list[QAItem] = []
    seen: set[tuple[int, int]] = set()
    for _ in range(max(cap, min(20 * cap, 200)) if pairs else 0):
        if len(items) == cap:
            break
        a, b = pairs[rng.integers(len(pairs))]
        if (a, b) in seen:
            continue
        seen.add((a, b))
        gt = round(float(np.linalg.norm(frames[b].camera_center - frames[a].camera_center)), 1)
        if not MIN_M <= gt <= MAX_M:
            continue
        template_id, template = templates.choose(PARAPHRASES[QUESTION_TYPE])
        question = template.format(
            start_frame_description=graph.frame_description(frames[a]),
            end_frame_description=graph.frame_description(frames[b]),
        )
        items.append(
            QAItem(
                QUESTION_TYPE,
                question,
                answer=format_number(gt, 1),
                frame_indices=(frames[a].index, frames[b].index),
                template=template_id,
            )
        )
    return items
