"""Extended: object-to-camera direction (multiple choice, 4 options): where an object is from the camera.

"In frame k of K, in which direction is the sofa from the camera?" The object need not be visible in
that frame (it may be behind the camera), so the question asks for a spatial memory of the room.

Rule, on the floor plane (world XY, Z up), for a sampled frame and a scene-unique object:

- ahead is the camera's viewing direction (its z axis) projected on the floor; frames whose camera
  looks more than 60 degrees up or down (projection shorter than 0.5) are not asked;
- phi = the clockwise angle seen from above from ahead to the object's centre, in [0, 360);
  the object's centre must be at least 0.5 m from the camera horizontally;
- ``object_camera_direction``: 8 sectors of 45 degrees centred on front (0), front-right (45), right
  (90), back-right, back, back-left, left, front-left (315); dropped within 7.5 degrees of a sector
  edge;
- ``object_camera_clock``: the 12 hours of a clock face with 12 o'clock ahead and 3 o'clock to the
  right (30 degrees each, hour h centred on 30 h); dropped within 5 degrees of an hour edge;
- dropped when more than 2 of the 8 box corners fall in another sector than the centre (a large or
  near object spans several directions).

Options: the answer and 3 other labels of the variant drawn at random.
"""

from __future__ import annotations

import numpy as np

from datagen.scene_graph import FrameNode, InstanceNode, SceneGraph
from datagen.tasks.common import (
    OFFICIAL_TEMPLATES,
    Paraphrases,
    QAItem,
    Template,
    TemplatePicker,
    ccw_angle_deg,
)

DIRECTION, CLOCK = "object_camera_direction", "object_camera_clock"
_FIELDS = ["frame_description", "object_name"]
PARAPHRASES = {
    DIRECTION: Paraphrases(
        DIRECTION,
        Template(
            "In {frame_description}, in which direction is the {object_name} from the camera, seen from above and "
            "relative to the direction the camera faces? The eight directions front, front-right, right, "
            "back-right, back, back-left, left and front-left each span 45 degrees.",
            _FIELDS,
        ),
        Template(
            "Seen from above, where is the {object_name} relative to the camera in {frame_description}, taking "
            "the direction the camera faces as front? Each of the eight directions (front, front-right, right, "
            "back-right, back, back-left, left, front-left) spans 45 degrees.",
            _FIELDS,
        ),
        Template(
            "If you stood where the camera is in {frame_description} and faced the way it faces, in which of "
            "eight 45-degree directions (front, front-right, right, back-right, back, back-left, left, "
            "front-left) would the {object_name} be?",
            _FIELDS,
        ),
    ),
    CLOCK: Paraphrases(
        CLOCK,
        Template(
            "In {frame_description}, if the camera faces 12 o'clock, at which clock position is the "
            "{object_name}, seen from above?",
            _FIELDS,
        ),
        Template(
            "Seen from above, with the direction the camera faces in {frame_description} as 12 o'clock, at what "
            "clock position is the {object_name}?",
            _FIELDS,
        ),
        Template(
            "Imagine a clock face around the camera in {frame_description}, with 12 o'clock where the camera "
            "faces and 3 o'clock to its right. At which hour is the {object_name}?",
            _FIELDS,
        ),
    ),
}
# Labels of the sectors in clockwise order from ahead, each sector centred on k * 360 / len(labels).
LABELS = {
    DIRECTION: ("front", "front-right", "right", "back-right", "back", "back-left", "left", "front-left"),
    CLOCK: tuple(f"{12 if h == 0 else h} o'clock" for h in range(12)),
}
EDGE_MARGIN_DEG = {DIRECTION: 7.5, CLOCK: 5.0}
DEFAULT_CAP = 10
MIN_LEVEL = 0.5  # length of the floor projection of the unit viewing direction
MIN_DISTANCE_M = 0.5
MAX_CORNERS_OFF = 2
NUM_OPTIONS = 4


def sector(question_type: str, clockwise_deg: np.ndarray) -> np.ndarray:
    """Sector numbers (index into ``LABELS[question_type]``) of clockwise angles from ahead, in degrees."""
    width = 360.0 / len(LABELS[question_type])
    return np.floor(((np.asarray(clockwise_deg) + width / 2) % 360.0) / width).astype(int)


def direction_label(question_type: str, frame: FrameNode, node: InstanceNode) -> str | None:
    """Where the object is from the frame's camera, or None when the rule calls it ambiguous."""
    ahead = frame.cam_to_world[:3, 2][:2]  # (2,) viewing direction on the floor
    if np.linalg.norm(ahead) < MIN_LEVEL:
        return None
    camera = frame.camera_center[:2]
    if np.linalg.norm(node.center[:2] - camera) < MIN_DISTANCE_M:
        return None
    phi = (360.0 - float(ccw_angle_deg(ahead, node.center[:2] - camera))) % 360.0
    width = 360.0 / len(LABELS[question_type])
    offset = (phi + width / 2) % width  # distance past the sector's lower edge
    if min(offset, width - offset) < EDGE_MARGIN_DEG[question_type]:
        return None
    k = int(sector(question_type, phi))
    corners = sector(question_type, (360.0 - ccw_angle_deg(ahead, node.corners[:, :2] - camera)) % 360.0)
    if np.sum(corners != k) > MAX_CORNERS_OFF:
        return None
    return LABELS[question_type][k]


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    uniques = [graph.unique_instance(c) for c in graph.unique_categories()]
    candidates = [(frame, node) for frame in graph.frames for node in uniques]
    items = []
    for question_type, paraphrases in PARAPHRASES.items():
        kept = 0
        for c in rng.permutation(len(candidates)):
            if kept == cap:
                break
            frame, node = candidates[c]
            answer = direction_label(question_type, frame, node)
            if answer is None:
                continue
            others = [label for label in LABELS[question_type] if label != answer]
            picked = [others[i] for i in sorted(rng.choice(len(others), size=NUM_OPTIONS - 1, replace=False))]
            template_id, template = templates.choose(paraphrases)
            items.append(
                QAItem(
                    question_type,
                    template.format(
                        frame_description=graph.frame_description(frame), object_name=node.category
                    ),
                    answer=answer,
                    choices=(answer, *picked),
                    frame_indices=(frame.index,),
                    template=template_id,
                )
            )
            kept += 1
    return items
