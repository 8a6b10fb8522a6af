"""The object vocabulary of the synthetic world: ScanNet-like categories, sizes, colours, shapes.

Every category has a size range in metres (width along the object's local x, depth along local y,
height along z), a base colour, where it goes (``wall``: back against a wall; ``floor``: free on
the floor; ``top``: standing on a support), whether other objects may stand on it, and a shape
(how :func:`object_parts` builds it from boxes). Local axes: x = width, y = depth with +y the
front of the object, z up; the origin is the centre of the object's bounding box.

Room types say which categories a room holds and how many: ``anchors`` are placed first
(``(category, min_count, max_count)``), then ``fillers`` are drawn by weight until the room reaches
its object budget or runs out of space.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLACEMENTS = ("wall", "floor", "top")
SHAPES = ("block", "table", "chair", "sofa", "bed", "lamp", "screen", "laptop", "plant", "toilet", "shelf", "drawers", "doors", "tub")


@dataclass(frozen=True)
class Category:
    name: str
    size_min: tuple[float, float, float]  # width, depth, height in metres
    size_max: tuple[float, float, float]
    colour: tuple[int, int, int]  # base RGB
    placement: str  # one of PLACEMENTS
    shape: str  # one of SHAPES
    is_support: bool = False  # objects of placement "top" may stand on it

    def __post_init__(self):
        if self.placement not in PLACEMENTS:
            raise ValueError(f"category {self.name!r}: placement must be one of {PLACEMENTS}, got {self.placement!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"category {self.name!r}: shape must be one of {SHAPES}, got {self.shape!r}")
        if not all(0 < lo <= hi for lo, hi in zip(self.size_min, self.size_max, strict=True)):
            raise ValueError(f"category {self.name!r}: need 0 < size_min <= size_max, got {self.size_min}, {self.size_max}")


# Sizes follow common furniture dimensions (IKEA-like catalogues, ScanNet box statistics).
CATEGORIES: dict[str, Category] = {
    c.name: c
    for c in (
        Category("bed", (1.40, 1.95, 0.90), (1.80, 2.15, 1.20), (176, 132, 96), "wall", "bed"),
        Category("sofa", (1.60, 0.80, 0.75), (2.40, 1.00, 0.95), (70, 110, 170), "wall", "sofa"),
        Category("chair", (0.42, 0.45, 0.80), (0.55, 0.55, 1.00), (200, 60, 50), "floor", "chair"),
        Category("stool", (0.30, 0.30, 0.45), (0.40, 0.40, 0.75), (220, 150, 40), "floor", "table"),
        Category("table", (0.80, 0.70, 0.72), (1.80, 1.00, 0.78), (150, 100, 60), "floor", "table", True),
        Category("coffee table", (0.80, 0.50, 0.38), (1.20, 0.70, 0.48), (110, 75, 50), "floor", "table", True),
        Category("desk", (1.00, 0.60, 0.72), (1.60, 0.80, 0.76), (190, 170, 140), "wall", "table", True),
        Category("cabinet", (0.60, 0.40, 0.80), (1.20, 0.60, 1.10), (120, 150, 120), "wall", "doors", True),
        Category("wardrobe", (1.00, 0.55, 1.90), (1.80, 0.65, 2.20), (230, 225, 210), "wall", "doors"),
        Category("dresser", (0.80, 0.45, 0.75), (1.40, 0.55, 1.00), (140, 90, 130), "wall", "drawers", True),
        Category("nightstand", (0.40, 0.35, 0.45), (0.55, 0.45, 0.60), (100, 140, 160), "wall", "drawers", True),
        Category("bookshelf", (0.60, 0.28, 1.50), (1.20, 0.40, 2.00), (90, 60, 40), "wall", "shelf"),
        Category("tv stand", (1.00, 0.35, 0.40), (1.80, 0.50, 0.60), (60, 60, 70), "wall", "drawers", True),
        Category("tv", (0.90, 0.20, 0.55), (1.45, 0.30, 0.85), (25, 25, 30), "top", "screen"),
        Category("monitor", (0.50, 0.18, 0.35), (0.70, 0.25, 0.50), (40, 40, 45), "top", "screen"),
        Category("laptop", (0.32, 0.22, 0.20), (0.38, 0.26, 0.25), (170, 170, 180), "top", "laptop"),
        Category("keyboard", (0.40, 0.13, 0.02), (0.45, 0.16, 0.04), (30, 30, 35), "top", "block"),
        Category("lamp", (0.25, 0.25, 0.40), (0.40, 0.40, 0.65), (240, 220, 120), "top", "lamp"),
        Category("microwave", (0.45, 0.35, 0.26), (0.55, 0.40, 0.32), (200, 200, 205), "top", "doors"),
        Category("printer", (0.38, 0.30, 0.18), (0.48, 0.40, 0.28), (235, 235, 235), "top", "block"),
        Category("refrigerator", (0.60, 0.65, 1.70), (0.90, 0.75, 1.90), (215, 220, 225), "wall", "doors"),
        Category("stove", (0.55, 0.58, 0.85), (0.75, 0.65, 0.92), (80, 80, 85), "wall", "block"),
        Category("counter", (1.20, 0.60, 0.88), (2.40, 0.65, 0.92), (180, 180, 160), "wall", "doors", True),
        Category("washing machine", (0.58, 0.55, 0.82), (0.62, 0.62, 0.88), (245, 245, 250), "wall", "doors"),
        Category("toilet", (0.36, 0.62, 0.72), (0.44, 0.75, 0.80), (250, 250, 250), "wall", "toilet"),
        Category("bathtub", (1.50, 0.70, 0.50), (1.80, 0.80, 0.60), (235, 240, 245), "wall", "tub"),
        Category("trash can", (0.25, 0.25, 0.30), (0.40, 0.40, 0.70), (90, 160, 90), "floor", "block"),
        Category("plant", (0.30, 0.30, 0.50), (0.60, 0.60, 1.50), (50, 150, 60), "floor", "plant"),
        Category("box", (0.25, 0.20, 0.15), (0.60, 0.45, 0.45), (190, 150, 100), "floor", "block"),
        Category("backpack", (0.28, 0.16, 0.38), (0.35, 0.24, 0.50), (30, 80, 140), "floor", "block"),
    )
}


@dataclass(frozen=True)
class RoomType:
    name: str
    area_m2: tuple[float, float]  # range of floor areas
    anchors: tuple[tuple[str, int, int], ...]  # (category, min_count, max_count), placed first
    fillers: tuple[tuple[str, float], ...]  # (category, weight), drawn until the object budget is met


ROOM_TYPES: dict[str, RoomType] = {
    r.name: r
    for r in (
        RoomType(
            "bedroom", (10.0, 32.0),
            anchors=(("bed", 1, 1), ("nightstand", 1, 2), ("wardrobe", 0, 1), ("dresser", 0, 1), ("lamp", 1, 2)),
            fillers=(("chair", 1.0), ("desk", 0.5), ("plant", 1.0), ("box", 1.0), ("backpack", 0.6), ("trash can", 0.5),
                     ("tv", 0.4), ("laptop", 0.5), ("bookshelf", 0.6), ("cabinet", 0.5), ("stool", 0.3)),
        ),
        RoomType(
            "living room", (18.0, 80.0),
            anchors=(("sofa", 1, 2), ("coffee table", 1, 1), ("tv stand", 1, 1), ("tv", 1, 1), ("chair", 0, 2)),
            fillers=(("chair", 1.0), ("plant", 1.5), ("lamp", 1.0), ("bookshelf", 0.8), ("cabinet", 0.8), ("table", 0.5),
                     ("trash can", 0.4), ("box", 0.6), ("stool", 0.5), ("laptop", 0.3), ("backpack", 0.3)),
        ),
        RoomType(
            "office", (12.0, 60.0),
            anchors=(("desk", 1, 3), ("chair", 1, 3), ("monitor", 1, 3), ("cabinet", 1, 2), ("trash can", 1, 1)),
            fillers=(("desk", 0.8), ("chair", 1.2), ("monitor", 1.0), ("keyboard", 1.0), ("laptop", 0.8), ("printer", 0.4),
                     ("bookshelf", 1.0), ("plant", 0.8), ("box", 0.8), ("backpack", 0.5), ("table", 0.4), ("lamp", 0.5)),
        ),
        RoomType(
            "kitchen", (10.0, 40.0),
            anchors=(("refrigerator", 1, 1), ("counter", 1, 2), ("stove", 1, 1), ("microwave", 1, 1), ("trash can", 1, 1)),
            fillers=(("table", 0.8), ("chair", 1.5), ("stool", 1.0), ("cabinet", 1.0), ("washing machine", 0.5),
                     ("plant", 0.6), ("box", 0.6), ("lamp", 0.3)),
        ),
        RoomType(
            "bathroom", (8.0, 16.0),
            anchors=(("toilet", 1, 1), ("bathtub", 0, 1), ("cabinet", 1, 1), ("trash can", 1, 1)),
            fillers=(("washing machine", 0.8), ("plant", 0.8), ("box", 0.6), ("stool", 0.6), ("lamp", 0.5), ("cabinet", 0.4)),
        ),
    )
}


@dataclass(frozen=True)
class Part:
    """One box of an object's geometry in the object's local frame, with its colour."""

    lo: np.ndarray  # (3,) min corner, metres
    hi: np.ndarray  # (3,) max corner, metres
    colour: np.ndarray  # (3,) float RGB in [0, 1]


def object_parts(category: Category, extent: np.ndarray, colour: np.ndarray) -> list[Part]:
    """Boxes that build one object inside its bounding box ``[-extent / 2, extent / 2]``.

    Args:
        category: the object's category (its ``shape`` picks the builder).
        extent: (3,) width, depth, height in metres.
        colour: (3,) base RGB in [0, 1] of this instance; parts use it and darker/lighter shades.
    """
    w, d, h = (float(x) for x in extent)
    x0, y0, z0 = -w / 2, -d / 2, -h / 2
    dark, light = colour * 0.55, np.minimum(colour * 1.25 + 0.08, 1.0)
    parts: list[Part] = []

    def box(lo, hi, c=colour):
        parts.append(Part(np.array(lo, dtype=np.float64), np.array(hi, dtype=np.float64), np.asarray(c, dtype=np.float64)))

    def legs(top_z: float, size: float, inset: float, c):
        for sx in (0, 1):
            for sy in (0, 1):
                lx = x0 + inset if sx == 0 else -x0 - inset - size
                ly = y0 + inset if sy == 0 else -y0 - inset - size
                box((lx, ly, z0), (lx + size, ly + size, top_z), c)

    shape = category.shape
    if shape == "block":
        box((x0, y0, z0), (-x0, -y0, -z0))
    elif shape == "table":
        top = min(0.05, 0.15 * h)
        box((x0, y0, -z0 - top), (-x0, -y0, -z0))
        legs(-z0 - top, min(0.06, 0.15 * min(w, d)), 0.02, dark)
    elif shape == "chair":
        seat_z = z0 + 0.5 * h
        box((x0, y0, seat_z - 0.05), (-x0, -y0, seat_z))
        box((x0, y0, seat_z), (-x0, y0 + 0.07, -z0), light)
        legs(seat_z - 0.05, 0.04, 0.01, dark)
    elif shape == "sofa":
        box((x0, y0, z0), (-x0, -y0, z0 + 0.5 * h))
        box((x0, y0, z0 + 0.5 * h), (-x0, y0 + 0.25 * d, -z0), dark)
        for ax in (x0, -x0 - 0.15):
            box((ax, y0 + 0.25 * d, z0 + 0.5 * h), (ax + 0.15, -y0, z0 + 0.75 * h), dark)
    elif shape == "bed":
        box((x0, y0, z0), (-x0, -y0, z0 + 0.28), dark)
        box((x0 + 0.03, y0 + 0.08, z0 + 0.28), (-x0 - 0.03, -y0 - 0.03, z0 + 0.5), (0.93, 0.93, 0.9))
        box((x0, y0, z0 + 0.28), (-x0, y0 + 0.08, -z0))
        box((x0 + 0.1, y0 + 0.1, z0 + 0.5), (-x0 - 0.1, y0 + 0.45, z0 + 0.62), light)
    elif shape == "lamp":
        box((-0.3 * w, -0.3 * d, z0), (0.3 * w, 0.3 * d, z0 + 0.06 * h), dark)
        box((-0.04 * w, -0.04 * d, z0 + 0.06 * h), (0.04 * w, 0.04 * d, z0 + 0.6 * h), dark)
        box((x0, y0, z0 + 0.55 * h), (-x0, -y0, -z0), colour)
    elif shape == "screen":
        box((-0.2 * w, y0, z0), (0.2 * w, -y0, z0 + 0.04 * h), colour)
        box((-0.05 * w, -0.1 * d, z0 + 0.04 * h), (0.05 * w, 0.1 * d, z0 + 0.2 * h), colour)
        box((x0, -0.15 * d, z0 + 0.2 * h), (-x0, 0.15 * d, -z0), colour)
        box((x0 + 0.02 * w, 0.15 * d, z0 + 0.23 * h), (-x0 - 0.02 * w, 0.2 * d, -z0 - 0.03 * h), (0.15, 0.25, 0.45))
    elif shape == "laptop":
        box((x0, y0 + 0.1 * d, z0), (-x0, -y0, z0 + 0.1 * h))
        box((x0, y0, z0), (-x0, y0 + 0.1 * d, -z0), dark)
    elif shape == "plant":
        box((-0.3 * w, -0.3 * d, z0), (0.3 * w, 0.3 * d, z0 + 0.3 * h), (0.6, 0.35, 0.2))
        box((x0, y0, z0 + 0.3 * h), (-x0, -y0, -z0))
        box((-0.3 * w, -0.3 * d, -z0 - 0.1 * h), (0.3 * w, 0.3 * d, -z0), light)
    elif shape == "toilet":
        box((x0, y0, z0), (-x0, y0 + 0.3 * d, -z0))
        box((x0 + 0.05 * w, y0 + 0.3 * d, z0), (-x0 - 0.05 * w, -y0, z0 + 0.55 * h), light * 0.95)
    elif shape == "tub":
        box((x0, y0, z0), (-x0, -y0, -z0 - 0.08))
        box((x0, y0, -z0 - 0.08), (-x0, y0 + 0.08, -z0), light)
        box((x0, -y0 - 0.08, -z0 - 0.08), (-x0, -y0, -z0), light)
        box((x0, y0 + 0.08, -z0 - 0.08), (x0 + 0.08, -y0 - 0.08, -z0), light)
        box((-x0 - 0.08, y0 + 0.08, -z0 - 0.08), (-x0, -y0 - 0.08, -z0), light)
    elif shape == "shelf":
        box((x0, y0, z0), (-x0, y0 + 0.02, -z0), dark)
        box((x0, y0, z0), (x0 + 0.03, -y0, -z0))
        box((-x0 - 0.03, y0, z0), (-x0, -y0, -z0))
        levels = max(3, int(h / 0.38))
        for k in range(levels + 1):
            z = z0 + k * (h - 0.03) / levels
            box((x0 + 0.03, y0 + 0.02, z), (-x0 - 0.03, -y0, z + 0.03))
            if k < levels:  # a row of books on each shelf
                box((x0 + 0.06, y0 + 0.04, z + 0.03), (0.2 * w, -y0 - 0.04, z + 0.03 + 0.6 * (h - 0.03) / levels),
                    (0.75, 0.2 + 0.1 * (k % 4), 0.25))
    elif shape in ("drawers", "doors"):
        box((x0, y0, z0), (-x0, -y0 - 0.015, -z0))
        n = max(2, int(h / 0.25)) if shape == "drawers" else max(1, int(round(w / 0.5)))
        for k in range(n):
            if shape == "drawers":
                lo = (x0 + 0.03, -y0 - 0.015, z0 + 0.03 + k * (h - 0.06) / n)
                hi = (-x0 - 0.03, -y0, z0 + (k + 1) * (h - 0.06) / n)
            else:
                lo = (x0 + 0.02 + k * (w - 0.04) / n, -y0 - 0.015, z0 + 0.05)
                hi = (x0 + (k + 1) * (w - 0.04) / n, -y0, -z0 - 0.03)
            box(lo, hi, light)
    return parts
