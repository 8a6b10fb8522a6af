"""Rooms and furniture placement of the synthetic world.

A room is a rectangle or an L-shape (a rectangle with one corner cut away), 8 to 80 m2 of floor
and 2.4 to 3.2 m high, with its floor at z = 0 and its bounding box starting at the origin. Its
floor is tiled by one or two axis-aligned rectangles (``floor_rects``), which the renderer uses.

Objects are placed one by one with rejection sampling; each keeps a yaw rotation about Z:
- ``wall`` objects stand with their back (local -y) against a wall, facing into the room;
- ``floor`` objects stand anywhere on the floor; chairs and stools prefer the sides of tables and
  the front of desks, coffee tables the front of a sofa;
- ``top`` objects stand on the top surface of a support (table, desk, cabinet, dresser, ...).
A placement is accepted when the object's footprint lies inside the room and, for every object
already placed, either their footprints keep ``CLEARANCE_M`` apart or their height intervals do
not overlap (a lamp on a nightstand touches it only at the nightstand's top). So no two boxes
interpenetrate, and every box is inside the room, under the ceiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from datagen.synthetic.vocabulary import CATEGORIES, ROOM_TYPES, Category, Part, RoomType, object_parts
from vlm3r_core.scene import Room, SceneObject

AREA_RANGE_M2 = (8.0, 80.0)
HEIGHT_RANGE_M = (2.4, 3.2)
CLEARANCE_M = 0.04  # minimum gap between the footprints of two objects that share a height
WALL_GAP_M = 0.02  # gap between a wall object and its wall
PLACEMENT_TRIES = 40


@dataclass(frozen=True)
class PlacedObject:
    """An object of the layout: its box (centre, extent, yaw about Z) and the parts that build it."""

    instance_id: int
    category: Category
    center: np.ndarray  # (3,) world metres
    extent: np.ndarray  # (3,) width, depth, height along the box axes
    yaw: float  # radians; local +x maps to (cos yaw, sin yaw, 0)
    parts: tuple[Part, ...]  # in the object's local frame (origin at the box centre)

    @property
    def rotation(self) -> np.ndarray:
        """(3, 3) rotation whose columns are the box axes in world."""
        return yaw_matrix(self.yaw)

    def footprint(self) -> shapely.Polygon:
        return footprint(self.center, self.extent, self.yaw)

    def z_range(self) -> tuple[float, float]:
        return float(self.center[2] - self.extent[2] / 2), float(self.center[2] + self.extent[2] / 2)

    def to_scene_object(self) -> SceneObject:
        return SceneObject(
            instance_id=self.instance_id,
            category=self.category.name,
            center=self.center.copy(),
            extent=self.extent.copy(),
            rotation=self.rotation,
        )


@dataclass(frozen=True)
class Layout:
    room_type: str
    room: Room
    floor_rects: tuple[tuple[float, float, float, float], ...]  # (x0, y0, x1, y1) tiles of the floor
    objects: tuple[PlacedObject, ...]


def yaw_matrix(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def footprint(center: np.ndarray, extent: np.ndarray, yaw: float) -> shapely.Polygon:
    """The object's rectangle on the floor plane as a shapely polygon."""
    half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * (np.asarray(extent[:2]) / 2)
    rot = yaw_matrix(yaw)[:2, :2]
    return shapely.Polygon(np.asarray(center[:2]) + half @ rot.T)


def make_room(rng: np.random.Generator, room_type: RoomType) -> tuple[Room, tuple[tuple[float, float, float, float], ...]]:
    """A rectangle or L-shaped room with an area in ``room_type.area_m2`` (inside 8-80 m2).

    Returns the contract's :class:`Room` (polygon counter-clockwise) and the floor rectangles.
    """
    lo, hi = max(room_type.area_m2[0], AREA_RANGE_M2[0]), min(room_type.area_m2[1], AREA_RANGE_M2[1])
    area = float(rng.uniform(lo, hi))
    aspect = float(rng.uniform(1.0, 1.7))
    height = float(rng.uniform(*HEIGHT_RANGE_M))
    if area >= 16.0 and rng.random() < 0.4:  # L-shape: a W x D rectangle minus a cut at one corner
        fx, fy = rng.uniform(0.3, 0.5, size=2)
        box_area = area / (1 - fx * fy)
        w = float(np.sqrt(box_area * aspect))
        d = box_area / w
        cx, cy = fx * w, fy * d  # cut size
        # The cut sits at the (+x, +y) corner; the two remaining rectangles tile the floor.
        polygon = np.array([[0, 0], [w, 0], [w, d - cy], [w - cx, d - cy], [w - cx, d], [0, d]])
        rects = ((0.0, 0.0, w, d - cy), (0.0, d - cy, w - cx, d))
        turns = int(rng.integers(4))  # rotate the L about the bounding box centre by k * 90 degrees
        polygon, rects = _rotate_quarter(polygon, rects, w, d, turns)
    else:
        w = float(np.sqrt(area * aspect))
        d = area / w
        if rng.random() < 0.5:
            w, d = d, w
        polygon = np.array([[0, 0], [w, 0], [w, d], [0, d]], dtype=np.float64)
        rects = ((0.0, 0.0, w, d),)
    area_m2 = float(shapely.Polygon(polygon).area)
    return Room(floor_polygon=polygon.astype(np.float64), floor_z=0.0, height=height, area_m2=area_m2), rects


def _rotate_quarter(polygon, rects, w, d, turns):
    """Rotates polygon and rectangles by ``turns`` quarter turns, keeping them in the positive quadrant."""
    for _ in range(turns):
        polygon = np.stack([d - polygon[:, 1], polygon[:, 0]], axis=1)  # (x, y) -> (d - y, x)
        rects = tuple((d - y1, x0, d - y0, x1) for x0, y0, x1, y1 in rects)
        w, d = d, w
    return polygon.astype(np.float64), rects


def choose_categories(rng: np.random.Generator, room_type: RoomType, area_m2: float) -> list[Category]:
    """The objects to try to place: anchors with their counts, then fillers up to the room's budget."""
    chosen = []
    for name, lo, hi in room_type.anchors:
        chosen += [CATEGORIES[name]] * int(rng.integers(lo, hi + 1))
    budget = int(np.clip(round(area_m2 * rng.uniform(0.45, 0.75)), 8, 30))
    names = [n for n, _ in room_type.fillers]
    weights = np.array([wt for _, wt in room_type.fillers])
    while len(chosen) < budget:
        chosen.append(CATEGORIES[names[rng.choice(len(names), p=weights / weights.sum())]])
    # Big wall furniture first, then the floor (tables before chairs), then objects on supports.
    order = {"wall": 0, "floor": 1, "top": 2}
    return sorted(chosen, key=lambda c: (order[c.placement], c.shape == "chair" or c.name == "stool",
                                         -c.size_max[0] * c.size_max[1]))


class _Placer:
    """Rejection sampling of object poses in one room."""

    def __init__(self, rng: np.random.Generator, room: Room):
        self.rng = rng
        self.room = room
        self.room_shape = shapely.Polygon(room.floor_polygon)
        poly = room.floor_polygon
        self.walls = [(poly[i], poly[(i + 1) % len(poly)]) for i in range(len(poly))]
        self.placed: list[PlacedObject] = []
        self.footprints: list[shapely.Polygon] = []  # of self.placed

    def fits(self, center: np.ndarray, extent: np.ndarray, yaw: float) -> bool:
        if center[2] + extent[2] / 2 > self.room.floor_z + self.room.height - 0.05:
            return False
        fp = footprint(center, extent, yaw)
        if not self.room_shape.contains(fp):
            return False
        z0, z1 = center[2] - extent[2] / 2, center[2] + extent[2] / 2
        for other, other_fp in zip(self.placed, self.footprints, strict=True):
            o0, o1 = other.z_range()
            if z0 < o1 - 1e-9 and o0 < z1 - 1e-9 and fp.distance(other_fp) < CLEARANCE_M:
                return False
        return True

    def sample_extent(self, cat: Category) -> np.ndarray:
        return self.rng.uniform(cat.size_min, cat.size_max)

    def on_wall(self, cat: Category, extent: np.ndarray):
        lengths = np.array([np.linalg.norm(b - a) for a, b in self.walls])
        i = int(self.rng.choice(len(self.walls), p=lengths / lengths.sum()))
        a, b = self.walls[i]
        if lengths[i] < extent[0] + 0.1:
            return None
        u = (b - a) / lengths[i]
        inward = np.array([-u[1], u[0]])  # counter-clockwise polygon: the room is on the left
        s = self.rng.uniform(extent[0] / 2 + 0.05, lengths[i] - extent[0] / 2 - 0.05)
        xy = a + s * u + inward * (extent[1] / 2 + WALL_GAP_M)
        yaw = float(np.arctan2(-inward[0], inward[1]))  # local +y (front) points into the room
        return np.array([xy[0], xy[1], extent[2] / 2]), yaw

    def on_floor(self, cat: Category, extent: np.ndarray):
        x0, y0 = self.room.floor_polygon.min(axis=0)
        x1, y1 = self.room.floor_polygon.max(axis=0)
        xy = self.rng.uniform([x0, y0], [x1, y1])
        yaw = float(self.rng.integers(4) * np.pi / 2 + self.rng.normal(0, 0.15))
        if self.rng.random() < 0.3:
            yaw = float(self.rng.uniform(-np.pi, np.pi))
        return np.array([xy[0], xy[1], extent[2] / 2]), yaw

    def facing(self, cat: Category, extent: np.ndarray, anchors: list[PlacedObject], front_only: bool,
               gap: tuple[float, float]):
        """Beside an anchor (a table side, a desk front, a sofa front), facing it."""
        if not anchors:
            return None
        anchor = anchors[int(self.rng.integers(len(anchors)))]
        side = 1 if front_only else int(self.rng.integers(4))  # 0: -x, 1: +y (front), 2: +x, 3: -y
        normal_local = np.array([[-1, 0], [0, 1], [1, 0], [0, -1]][side], dtype=np.float64)
        half_normal = anchor.extent[0] / 2 if side in (0, 2) else anchor.extent[1] / 2
        half_side = anchor.extent[1] / 2 if side in (0, 2) else anchor.extent[0] / 2
        distance = self.rng.uniform(*gap)
        along = self.rng.uniform(-1, 1) * max(half_side - extent[0] / 2, 0.0)
        tangent_local = np.array([-normal_local[1], normal_local[0]])
        local = normal_local * (half_normal + distance + extent[1] / 2) + tangent_local * along
        rot = anchor.rotation[:2, :2]
        normal = rot @ normal_local
        xy = anchor.center[:2] + rot @ local
        yaw = float(np.arctan2(normal[0], -normal[1]))  # local +y (front) points back at the anchor
        return np.array([xy[0], xy[1], extent[2] / 2]), yaw

    def on_support(self, cat: Category, extent: np.ndarray):
        supports = [o for o in self.placed if o.category.is_support
                    and o.extent[0] > extent[0] + 0.02 and o.extent[1] > extent[1] + 0.02]
        if not supports:
            return None
        sup = supports[int(self.rng.integers(len(supports)))]
        room_x = (sup.extent[0] - extent[0]) / 2 - 0.01
        room_y = (sup.extent[1] - extent[1]) / 2 - 0.01
        local = self.rng.uniform([-room_x, -room_y], [room_x, room_y])
        if cat.shape == "screen":  # screens stand towards the back of their support
            local[1] = -room_y
        xy = sup.center[:2] + sup.rotation[:2, :2] @ local
        return np.array([xy[0], xy[1], sup.z_range()[1] + extent[2] / 2]), sup.yaw

    def place(self, cat: Category, colour: np.ndarray) -> PlacedObject | None:
        tables = [o for o in self.placed if o.category.name in ("table", "coffee table")]
        desks = [o for o in self.placed if o.category.name == "desk"]
        sofas = [o for o in self.placed if o.category.name == "sofa"]
        for attempt in range(PLACEMENT_TRIES):
            extent = self.sample_extent(cat)
            late = attempt >= PLACEMENT_TRIES // 2  # fall back to a free spot on the floor
            if cat.placement == "wall":
                pose = self.on_wall(cat, extent)
            elif cat.placement == "top":
                pose = self.on_support(cat, extent)
            elif cat.name in ("chair", "stool") and not late and (tables or desks):
                use_desk = bool(desks) and (not tables or self.rng.random() < 0.5)
                pose = self.facing(cat, extent, desks if use_desk else tables, front_only=use_desk, gap=(0.05, 0.2))
            elif cat.name == "coffee table" and not late and sofas:
                pose = self.facing(cat, extent, sofas, front_only=True, gap=(0.3, 0.6))
            else:
                pose = self.on_floor(cat, extent)
            if pose is None:
                continue
            center, yaw = pose
            if self.fits(center, extent, yaw):
                obj = PlacedObject(
                    instance_id=len(self.placed) + 1,
                    category=cat,
                    center=center,
                    extent=extent,
                    yaw=float(np.arctan2(np.sin(yaw), np.cos(yaw))),
                    parts=tuple(object_parts(cat, extent, colour)),
                )
                self.placed.append(obj)
                self.footprints.append(obj.footprint())
                return obj
        return None


def instance_colour(rng: np.random.Generator, cat: Category) -> np.ndarray:
    """(3,) RGB in [0, 1]: the category colour with a per-instance brightness and tint."""
    base = np.array(cat.colour, dtype=np.float64) / 255
    return np.clip(base * rng.uniform(0.8, 1.15) + rng.normal(0, 0.05, size=3), 0.02, 1.0)


def make_layout(rng: np.random.Generator) -> Layout:
    """A random room type, room and furniture arrangement."""
    names = sorted(ROOM_TYPES)
    room_type = ROOM_TYPES[names[int(rng.integers(len(names)))]]
    room, rects = make_room(rng, room_type)
    placer = _Placer(rng, room)
    for cat in choose_categories(rng, room_type, room.area_m2):
        placer.place(cat, instance_colour(rng, cat))
    return Layout(room_type=room_type.name, room=room, floor_rects=rects, objects=tuple(placer.placed))
