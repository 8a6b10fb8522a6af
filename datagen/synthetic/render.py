"""CPU ray-cast rendering of a synthetic layout: RGB, depth and instance masks.

Every object part is a box of 12 triangles in an open3d ``RaycastingScene`` (Embree); the room
(floor, ceiling and the walls of one rectangle or an L of two) is intersected in closed form,
which halves the casting time since most rays of an indoor view end on a room surface. Each frame
casts one ray per pixel centre and looks the hit surface up in small tables (colour, normal,
instance id, surface kind). Shading is flat and cheap: a directional light folded into the
colours once per scene, a head-light term per object triangle and frame, distance falloff per
pixel, a checker pattern on the floor and a skirting band at the bottom of the walls, so
categories, instances and camera motion are visible.

Shapes: ``N`` frames, ``H`` x ``W`` pixels. Cameras use OpenCV axes (x right, y down, z forward);
``cam_to_world`` is 4x4. Depth is the z-depth along the optical axis in metres.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from datagen.synthetic.layout import Layout
from datagen.visibility import BACKGROUND
from vlm3r_core.scene import Intrinsics

KIND_OBJECT, KIND_FLOOR, KIND_WALL, KIND_CEILING = 0, 1, 2, 3

# Box corners indexed by bits (x, y, z) and its 12 triangles, counter-clockwise seen from outside.
_BOX_CORNERS = np.array([[x, y, z] for x in (0, 1) for y in (0, 1) for z in (0, 1)], dtype=np.float64)
_BOX_TRIANGLES = np.array(
    [
        [0, 1, 3], [0, 3, 2],  # x = lo
        [4, 6, 7], [4, 7, 5],  # x = hi
        [0, 4, 5], [0, 5, 1],  # y = lo
        [2, 3, 7], [2, 7, 6],  # y = hi
        [0, 2, 6], [0, 6, 4],  # z = lo
        [1, 5, 7], [1, 7, 3],  # z = hi
    ],
    dtype=np.int64,
)


@dataclass(frozen=True)
class RenderedVideo:
    """Rendered frames of one trajectory.

    Attributes:
        rgb: (N, H, W, 3) uint8.
        depth: (N, H, W) float32 z-depth in metres.
        instance: (N, H, W) int16 instance id per pixel, ``BACKGROUND`` (-1) on room surfaces.
    """

    rgb: np.ndarray
    depth: np.ndarray
    instance: np.ndarray


@dataclass(frozen=True)
class SceneMesh:
    """The scene as triangles with per-triangle attributes (``F`` triangles), plus its room box.

    The triangles hold every object part and the room surfaces (``kind``); :class:`SceneRenderer`
    ray-casts only the object triangles and intersects the room analytically from ``room_rects``.
    Room surface colours are per face: ``ROOM_FACES`` order.
    """

    vertices: np.ndarray  # (V, 3) float32 world metres
    triangles: np.ndarray  # (F, 3) uint32
    colour: np.ndarray  # (F, 3) float32 RGB in [0, 1] before lighting
    normal: np.ndarray  # (F, 3) float32 unit normals facing the visible side
    instance: np.ndarray  # (F,) int16, BACKGROUND for room surfaces
    kind: np.ndarray  # (F,) uint8 KIND_*
    room_rects: np.ndarray  # (R, 4) float32 [x0, y0, x1, y1] floor rectangles (1 or 2, sharing an edge)
    floor_z: float
    ceiling_z: float
    room_colour: np.ndarray  # (6, 3) float32 RGB of the room faces, ROOM_FACES order
    light_dir: np.ndarray  # (3,) unit vector towards the directional light
    floor_tile_m: float  # side of the floor's checker tiles


# Room faces by the inward normal of the surface: walls facing -x, +x, -y, +y, then floor, ceiling.
ROOM_FACES = np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float32)
FACE_FLOOR, FACE_CEILING = 4, 5


def pinhole_intrinsics(width: int, height: int, hfov_deg: float) -> Intrinsics:
    """Square-pixel pinhole with the principal point at the image centre."""
    f = (width / 2) / np.tan(np.deg2rad(hfov_deg) / 2)
    return Intrinsics(fx=float(f), fy=float(f), cx=width / 2, cy=height / 2)


def build_scene_mesh(layout: Layout, rng: np.random.Generator) -> SceneMesh:
    """Triangles of the room surfaces and of every object part, with their attributes.

    ``rng`` picks the room's surface colours, floor tiles and light direction.
    """
    verts, tris, colours, normals, instances, kinds = [], [], [], [], [], []

    def add(v: np.ndarray, t: np.ndarray, colour, normal: np.ndarray, instance: int, kind: int):
        tris.append(t + sum(len(x) for x in verts))
        verts.append(v)
        colours.append(np.broadcast_to(np.asarray(colour, dtype=np.float32), (len(t), 3)))
        normals.append(normal.astype(np.float32))
        instances.append(np.full(len(t), instance, dtype=np.int16))
        kinds.append(np.full(len(t), kind, dtype=np.uint8))

    room = layout.room
    z0, z1 = room.floor_z, room.floor_z + room.height
    wall_colour = rng.uniform(0.65, 0.92, size=3)
    room_colour = np.concatenate([
        np.clip(wall_colour * rng.uniform(0.88, 1.06, size=(4, 1)), 0, 1),  # four wall directions
        rng.uniform([0.45, 0.3, 0.18], [0.75, 0.6, 0.45])[None],  # floor
        np.array([[0.93, 0.93, 0.9]]),  # ceiling
    ]).astype(np.float32)
    azimuth = rng.uniform(0, 2 * np.pi)
    light = np.array([np.cos(azimuth), np.sin(azimuth), 2.0])
    for x0, y0, x1, y1 in layout.floor_rects:
        quad = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        for z, kind, face in ((z0, KIND_FLOOR, FACE_FLOOR), (z1, KIND_CEILING, FACE_CEILING)):
            v = np.column_stack([quad, np.full(4, z)])
            add(v, np.array([[0, 1, 2], [0, 2, 3]]), room_colour[face], np.tile(ROOM_FACES[face], (2, 1)), BACKGROUND, kind)
    poly = room.floor_polygon
    for i in range(len(poly)):
        a, b = poly[i], poly[(i + 1) % len(poly)]
        u = (b - a) / np.linalg.norm(b - a)
        inward = np.array([-u[1], u[0], 0.0])
        face = int(np.argmax(ROOM_FACES[:4] @ inward))
        v = np.array([[a[0], a[1], z0], [b[0], b[1], z0], [b[0], b[1], z1], [a[0], a[1], z1]])
        add(v, np.array([[0, 1, 2], [0, 2, 3]]), room_colour[face], np.tile(inward, (2, 1)), BACKGROUND, KIND_WALL)

    face_normals_local = np.array([[-1, 0, 0], [1, 0, 0], [0, -1, 0], [0, 1, 0], [0, 0, -1], [0, 0, 1]], dtype=np.float64)
    for obj in layout.objects:
        rot = obj.rotation
        for part in obj.parts:
            local = part.lo + _BOX_CORNERS * (part.hi - part.lo)  # (8, 3)
            world = obj.center + local @ rot.T
            add(world, _BOX_TRIANGLES, part.colour, np.repeat(face_normals_local @ rot.T, 2, axis=0), obj.instance_id, KIND_OBJECT)

    return SceneMesh(
        vertices=np.concatenate(verts).astype(np.float32),
        triangles=np.concatenate(tris).astype(np.uint32),
        colour=np.concatenate(colours).astype(np.float32),
        normal=np.concatenate(normals),
        instance=np.concatenate(instances),
        kind=np.concatenate(kinds),
        room_rects=np.array(layout.floor_rects, dtype=np.float32),
        floor_z=float(z0),
        ceiling_z=float(z1),
        room_colour=room_colour,
        light_dir=light / np.linalg.norm(light),
        floor_tile_m=float(rng.choice([0.3, 0.45, 0.6])),
    )


def shade(colour: np.ndarray, normal: np.ndarray, light_dir: np.ndarray) -> np.ndarray:
    """(K, 3) colours lit by ambient + directional light, scaled to [0, 255): 255 * colour * (0.5 + 0.35 max(n.l, 0))."""
    return 255 * colour * (0.5 + 0.35 * np.clip(normal @ light_dir.astype(np.float32), 0, 1))[:, None]


def surface_brightness(depth: np.ndarray, kind: np.ndarray, points_xy_z, floor_tile_m: float) -> np.ndarray:
    """(H, W) brightness in [0.33, 1]: distance falloff, checker tiles on the floor, dark skirting on walls.

    ``points_xy_z`` are the hit points' world x, y, z, each (H, W).
    """
    x, y, z = points_xy_z
    bright = np.clip(1.1 - 0.045 * depth, 0.6, 1.0)
    tile = 1.0 / floor_tile_m  # floor points have x, y >= 0: truncation is floor
    checker = ((x * tile).astype(np.int32) + (y * tile).astype(np.int32)) & 1
    bright *= np.where(kind == KIND_FLOOR, 0.88 + 0.12 * checker, np.where((kind == KIND_WALL) & (z < 0.1), 0.55, 1.0))
    return bright


class SceneRenderer:
    """Renders frames of one scene for a fixed image size and intrinsics (see the module docstring).

    Args:
        mesh: the scene triangles and their attributes.
        width, height: image size in pixels.
        intrinsics: pinhole intrinsics of every frame.
        num_threads: Embree threads per ray cast (1 in parallel jobs: one scene per core).
    """

    def __init__(self, mesh: SceneMesh, width: int, height: int, intrinsics: Intrinsics, num_threads: int = 1):
        self.mesh, self.width, self.height, self.num_threads = mesh, width, height, num_threads
        objects = mesh.kind == KIND_OBJECT
        self.scene = o3d.t.geometry.RaycastingScene()
        if objects.any():
            self.scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(np.ascontiguousarray(mesh.triangles[objects])))
        # Colour / instance / kind tables: object triangles first, then the six room faces.
        self.num_object_triangles = int(objects.sum())
        self.normal = np.concatenate([mesh.normal[objects], ROOM_FACES])  # (F_obj + 6, 3)
        self.lit_colour = shade(np.concatenate([mesh.colour[objects], mesh.room_colour]), self.normal, mesh.light_dir)
        self.centroids = mesh.vertices[mesh.triangles[objects]].mean(axis=1)  # (F_obj, 3)
        self.instance = np.concatenate([mesh.instance[objects], np.full(6, BACKGROUND, dtype=np.int16)])
        self.kind = np.concatenate([mesh.kind[objects], np.array([KIND_WALL] * 4 + [KIND_FLOOR, KIND_CEILING], dtype=np.uint8)])
        # Pixel centre (u + 0.5, v + 0.5) as [a, b, 1, 1]: the ray of one frame is [a, b, 1, 1] @ M with
        # M = [[R^T on the direction columns], [centre on the origin columns]] (4, 6). Its direction has
        # z = 1 in the camera frame, so the ray parameter of a hit is its z-depth.
        a = (np.arange(width, dtype=np.float32) + 0.5 - intrinsics.cx) / intrinsics.fx
        b = (np.arange(height, dtype=np.float32) + 0.5 - intrinsics.cy) / intrinsics.fy
        self.pixels = np.ones((height, width, 4), dtype=np.float32)  # (H, W, 4)
        self.pixels[..., 0], self.pixels[..., 1] = a[None, :], b[:, None]
        self.rays = np.empty((height, width, 6), dtype=np.float32)  # (H, W, [origin, direction])

    def room_exit(self, centre: np.ndarray, dirs: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Distance along each ray to the room's boundary and the face it hits.

        Args:
            centre: (3,) camera centre, inside the room.
            dirs: world ray directions x, y, z, each (H, W).

        Returns:
            t (H, W) float32 ray parameter of the exit point, face (H, W) uint8 index into ``ROOM_FACES``.
        """
        dx, dy, dz = dirs
        rects = self.mesh.room_rects
        inside = (rects[:, 0] <= centre[0]) & (centre[0] <= rects[:, 2]) & (rects[:, 1] <= centre[1]) & (centre[1] <= rects[:, 3])
        first = int(np.argmax(inside))
        with np.errstate(divide="ignore", invalid="ignore"):
            def exit_rect(r):  # walls of one convex rectangle: (t, face)
                tx = (np.where(dx >= 0, r[2], r[0]) - centre[0]) / dx
                ty = (np.where(dy >= 0, r[3], r[1]) - centre[1]) / dy
                on_y = tx >= ty  # faces 0/1 (x walls) or 2/3 (y walls), odd when moving towards -x / -y
                face = 2 * on_y.view(np.uint8) + np.where(on_y, dy < 0, dx < 0).view(np.uint8)
                return np.minimum(tx, ty), face

            t, face = exit_rect(rects[first])
            if len(rects) == 2:  # an L: a ray leaving the first rectangle into the second goes on to its walls
                r, other = rects[first], rects[1 - first]
                # The face of the first rectangle on the shared edge, and the range of the second along it.
                shared = [r[2] == other[0], r[0] == other[2], r[3] == other[1], r[1] == other[3]].index(True)
                along = centre[1] + t * dy if shared < 2 else centre[0] + t * dx
                lo, hi = (other[1], other[3]) if shared < 2 else (other[0], other[2])
                through = (face == shared) & (lo <= along) & (along <= hi)
                t2, face2 = exit_rect(other)
                t, face = np.where(through, t2, t), np.where(through, face2, face)
            tz = (np.where(dz >= 0, self.mesh.ceiling_z, self.mesh.floor_z) - centre[2]) / dz
        vertical = tz < t
        face = np.where(vertical, FACE_FLOOR + (dz >= 0).view(np.uint8), face)
        return np.where(vertical, tz, t).astype(np.float32, copy=False), face

    def render(self, cam_to_world: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One frame: rgb (H, W, 3) uint8, depth (H, W) float32, instance (H, W) int16."""
        rot, centre = cam_to_world[:3, :3].astype(np.float32), cam_to_world[:3, 3].astype(np.float32)
        m = np.zeros((4, 6), dtype=np.float32)
        m[:3, 3:], m[3, :3] = rot.T, centre
        np.matmul(self.pixels, m, out=self.rays)  # (H, W, 6)
        dirs = (self.rays[..., 3], self.rays[..., 4], self.rays[..., 5])
        hit = self.scene.cast_rays(o3d.core.Tensor.from_numpy(self.rays), nthreads=self.num_threads)
        t_obj = hit["t_hit"].numpy()  # (H, W), inf where no object is hit
        t_room, face = self.room_exit(centre, dirs)
        on_object = t_obj < t_room  # (H, W)
        depth = np.where(on_object, t_obj, t_room)  # (H, W)
        surface = np.where(on_object, hit["primitive_ids"].numpy(), face + np.uint32(self.num_object_triangles))  # (H, W) table row

        # Per-surface colour with a head-light term on objects for this camera position.
        n_obj = self.num_object_triangles
        to_cam = centre - self.centroids  # (F_obj, 3)
        facing = np.abs(np.einsum("fc,fc->f", self.normal[:n_obj], to_cam)) / np.linalg.norm(to_cam, axis=1)  # (F_obj,)
        head = np.ones(len(self.lit_colour), dtype=np.float32)
        head[:n_obj] = 0.7 + 0.3 * facing
        kind = self.kind[surface]  # (H, W)
        points = tuple(centre[k] + depth * dirs[k] for k in range(3))
        bright = surface_brightness(depth, kind, points, self.mesh.floor_tile_m)  # (H, W)
        rgb = (self.lit_colour * head[:, None])[surface]  # (H, W, 3), values < 255
        rgb *= bright[..., None]
        return rgb.astype(np.uint8), depth, self.instance[surface]

    def render_video(self, cam_to_world: np.ndarray) -> RenderedVideo:
        """Renders (N, 4, 4) poses into a :class:`RenderedVideo`."""
        n = len(cam_to_world)
        rgb = np.empty((n, self.height, self.width, 3), dtype=np.uint8)
        depth = np.empty((n, self.height, self.width), dtype=np.float32)
        instance = np.empty((n, self.height, self.width), dtype=np.int16)
        for i in range(n):
            rgb[i], depth[i], instance[i] = self.render(cam_to_world[i])
        return RenderedVideo(rgb=rgb, depth=depth, instance=instance)
