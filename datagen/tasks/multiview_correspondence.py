"""Extended: multi-view correspondence (2 choices): is the object boxed in frame i the one boxed in frame j?

"Is the chair inside the box [412, 180, 530, 330] in frame 3 of 32 the same chair as the one inside
the box [40, 200, 151, 362] in frame 20 of 32?" Yes or No. The boxes are the scene's 2D boxes
(``frames[].visible[].bbox_2d``: ``[x_min, y_min, x_max, y_max]`` in pixels of the video frame,
rounded to whole pixels), and the question names the frame size.

Rule:

- only categories with at least 2 named instances in the scene (with one, "the same?" is always
  yes), and both boxes show that category, so a No is a different instance of the same category;
- an instance can be pointed at in a sampled frame when at least 0.5 % of the frame's pixels show
  it and its box overlaps the box of every other visible instance of its category by an IoU of at
  most 0.3 (the box alone says which instance is meant);
- the two frames are sampled frames at least 2 apart (in rank), the earlier one named first;
- Yes and No alternate (the first drawn at random), so a scene's answers are balanced: each
  (frame pair, category) in random order is used for the answer whose turn it is, when it can give
  one (a Yes needs an instance pointable in both frames, a No two different pointable instances).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from datagen.scene_graph import FrameNode, SceneGraph
from datagen.tasks.common import OFFICIAL_TEMPLATES, Paraphrases, QAItem, Template, TemplatePicker

QUESTION_TYPE = "multiview_correspondence"
_FIELDS = [
    "object_name",
    "first_box",
    "first_frame_description",
    "second_box",
    "second_frame_description",
    "frame_size",
]
PARAPHRASES = {
    QUESTION_TYPE: Paraphrases(
        QUESTION_TYPE,
        Template(
            "Is the {object_name} inside the box {first_box} in {first_frame_description} the same {object_name} "
            "as the one inside the box {second_box} in {second_frame_description}? Boxes are [x_min, y_min, x_max, "
            "y_max] in pixels of the {frame_size} video frames.",
            _FIELDS,
        ),
        Template(
            "In {first_frame_description} a {object_name} is at pixel box {first_box}; in "
            "{second_frame_description} a {object_name} is at pixel box {second_box} (boxes as [x_min, y_min, "
            "x_max, y_max] in the {frame_size} frames). Are they the same physical {object_name}?",
            _FIELDS,
        ),
        Template(
            "Do the {object_name} at {first_box} in {first_frame_description} and the {object_name} at "
            "{second_box} in {second_frame_description} show the same object instance? The boxes are [x_min, "
            "y_min, x_max, y_max] in pixels of the {frame_size} video.",
            _FIELDS,
        ),
    )
}
YES, NO = "Yes", "No"
DEFAULT_CAP = 10
MIN_PIXEL_FRACTION = 0.005
MAX_IOU = 0.3
MIN_RANK_GAP = 2


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two ``[x0, y0, x1, y1]`` boxes (0 when either is empty)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return w * h / union if union > 0 else 0.0


def pointable(graph: SceneGraph, frame: FrameNode) -> dict[str, list[int]]:
    """Category -> the instances of a category with >= 2 instances that the frame's boxes point at
    unambiguously (enough pixels, IoU <= 0.3 with the other visible instances of the category), sorted."""
    min_pixels = MIN_PIXEL_FRACTION * graph.scene.video.width * graph.scene.video.height
    by_category: dict[str, list[int]] = defaultdict(list)
    for i in frame.visible:
        by_category[graph.instances[i].category].append(i)
    out = {}
    for category, ids in by_category.items():
        if graph.category_counts[category] < 2:
            continue
        boxes = {i: frame.visibility[i].bbox_2d for i in ids}
        ok = [
            i
            for i in ids
            if frame.visibility[i].pixels >= min_pixels
            and all(box_iou(boxes[i], boxes[j]) <= MAX_IOU for j in ids if j != i)
        ]
        if ok:
            out[category] = sorted(ok)
    return out


def box_text(box: tuple[float, ...]) -> str:
    """``"[x0, y0, x1, y1]"`` in whole pixels."""
    return "[" + ", ".join(str(round(v)) for v in box) + "]"


def generate(
    graph: SceneGraph,
    rng: np.random.Generator,
    cap: int = DEFAULT_CAP,
    templates: TemplatePicker = OFFICIAL_TEMPLATES,
) -> list[QAItem]:
    frames = graph.frames
    points = [pointable(graph, f) for f in frames]
    triples = [
        (a, b, category)
        for a in range(len(frames))
        for b in range(a + 1, len(frames))
        if frames[b].rank - frames[a].rank >= MIN_RANK_GAP
        for category in sorted(points[a].keys() & points[b].keys())
    ]
    video = graph.scene.video
    items: list[QAItem] = []
    want_same = bool(rng.random() < 0.5)
    for t in rng.permutation(len(triples)):
        if len(items) == cap:
            break
        a, b, category = triples[t]
        if want_same:
            pairs = [(i, i) for i in points[a][category] if i in points[b][category]]
        else:
            pairs = [(i, j) for i in points[a][category] for j in points[b][category] if i != j]
        if not pairs:
            continue
        first, second = pairs[rng.integers(len(pairs))]
        template_id, template = templates.choose(PARAPHRASES[QUESTION_TYPE])
        question = template.format(
            object_name=category,
            first_box=box_text(frames[a].visibility[first].bbox_2d),
            first_frame_description=graph.frame_description(frames[a]),
            second_box=box_text(frames[b].visibility[second].bbox_2d),
            second_frame_description=graph.frame_description(frames[b]),
            frame_size=f"{video.width}x{video.height}",
        )
        items.append(
            QAItem(
                QUESTION_TYPE,
                question,
                answer=YES if want_same else NO,
                choices=(YES, NO),
                frame_indices=(frames[a].index, frames[b].index),
                template=template_id,
            )
        )
        want_same = not want_same
    return items
