"""A hand-built room shared by the task tests; every distance below is worked out on paper.

Room 6 x 5 m (30 m^2, so the relative-distance margin is 0.15 m). Boxes (x, y, z ranges in metres):

    bed    x [0, 2]       y [0.2, 1.8]   z [0, 0.6]
    sofa   x [3.5, 5.5]   y [0.5, 1.5]   z [0, 0.8]
    tv     x [2.4, 3.6]   y [4.4, 4.6]   z [0.65, 1.35]
    chair  x [0.75, 1.25] y [3.25, 3.75] z [0, 0.9]     (instance 4)
    chair  x [4.75, 5.25] y [3.25, 3.75] z [0, 0.9]     (instance 5)
    table  x [2.5, 3.5]   y [2.4, 3.2]   z [0, 0.8]
    lamp   x [2.9, 3.1]   y [2.7, 2.9]   z [0.8, 1.2]   (stands on the table)
"""

from __future__ import annotations

import math

import pytest

from datagen.scene_graph import SceneGraph
from tests.datagen.scene_builder import box, look_at, make_scene

ROOM_OBJECTS = [
    box(1, "bed", (1, 1, 0.3), (2, 1.6, 0.6)),
    box(2, "sofa", (4.5, 1, 0.4), (2, 1, 0.8)),
    box(3, "tv", (3, 4.5, 1.0), (1.2, 0.2, 0.7)),
    box(4, "chair", (1, 3.5, 0.45), (0.5, 0.5, 0.9)),
    box(5, "chair", (5, 3.5, 0.45), (0.5, 0.5, 0.9)),
    box(6, "table", (3, 2.8, 0.4), (1, 0.8, 0.8)),
    box(7, "lamp", (3, 2.8, 1.0), (0.2, 0.2, 0.4)),
]

# Closest-point distances between categories (minimum over instances), by hand.
PAPER_DISTANCES = {
    ("bed", "sofa"): 1.5,
    ("bed", "tv"): math.sqrt(2.6**2 + 0.4**2 + 0.05**2),
    ("bed", "chair"): 1.45,
    ("bed", "table"): math.sqrt(0.5**2 + 0.6**2),
    ("bed", "lamp"): math.sqrt(0.9**2 + 0.9**2 + 0.2**2),
    ("sofa", "tv"): 2.9,
    ("sofa", "chair"): 1.75,
    ("sofa", "table"): 0.9,
    ("sofa", "lamp"): math.sqrt(0.4**2 + 1.2**2),
    ("tv", "chair"): math.sqrt(1.15**2 + 0.65**2),
    ("tv", "table"): 1.2,
    ("tv", "lamp"): 1.5,
    ("chair", "table"): math.sqrt(1.25**2 + 0.05**2),
    ("chair", "lamp"): math.sqrt(1.65**2 + 0.35**2),
    ("table", "lamp"): 0.0,
}


def paper_distance(a: str, b: str) -> float:
    return PAPER_DISTANCES.get((a, b), PAPER_DISTANCES.get((b, a)))


@pytest.fixture
def room_graph() -> SceneGraph:
    poses = [look_at((3, 0.1 + 0.05 * i, 1.5), (3, 4.5, 0.8)) for i in range(32)]
    return SceneGraph(
        make_scene(ROOM_OBJECTS, poses, room_size=(6.0, 5.0), visible=[[1, 2, 3, 4, 5, 6, 7]] * 32)
    )
