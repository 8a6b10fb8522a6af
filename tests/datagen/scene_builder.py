"""Hand-built scenes: boxes, look-at cameras and projected visibility, for task tests and benchmarks.

A scene whose answers can be worked out on paper: a rectangular room, yaw-rotated boxes, and a
camera path given as look-at poses. Visibility is geometric (no occlusion): an instance is visible
in a frame when its box centre is in front of the camera and projects inside the image; its 2D box
is the image-clipped box of its projected corners.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vlm3r_core.scene import Frame, Intrinsics, Room, Scene, SceneObject, VideoInfo, Visibility

WORLD_UP = np.array([0.0, 0.0, 1.0])


def yaw_rotation(yaw_deg: float) -> np.ndarray:
    """(3, 3) rotation about +Z by ``yaw_deg`` (counter-clockwise seen from above)."""
    c, s = np.cos(np.radians(yaw_deg)), np.sin(np.radians(yaw_deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def box(
    instance_id: int, category: str, center: Sequence[float], extent: Sequence[float], yaw_deg: float = 0.0
) -> SceneObject:
    """An object box: centre and full extents in metres, rotated by ``yaw_deg`` about Z."""
    return SceneObject(
        instance_id, category, np.asarray(center, float), np.asarray(extent, float), yaw_rotation(yaw_deg)
    )


def look_at(eye: Sequence[float], target: Sequence[float]) -> np.ndarray:
    """(4, 4) camera-to-world pose of an OpenCV camera at ``eye`` looking at ``target`` (Z-up world)."""
    eye, target = np.asarray(eye, float), np.asarray(target, float)
    z = target - eye
    z /= np.linalg.norm(z)
    x = np.cross(z, WORLD_UP)
    if np.linalg.norm(x) < 1e-9:
        raise ValueError(f"look_at: viewing direction {z} is vertical")
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([x, y, z], axis=1)
    pose[:3, 3] = eye
    return pose


def project_visibility(
    objects: Sequence[SceneObject], cam_to_world: np.ndarray, intrinsics: Intrinsics, width: int, height: int
) -> tuple[Visibility, ...]:
    """Instances whose centre is in front of the camera and inside the image (no occlusion test)."""
    rotation, t = cam_to_world[:3, :3], cam_to_world[:3, 3]
    k = intrinsics.matrix()
    out = []
    for o in sorted(objects, key=lambda o: o.instance_id):
        points = (np.vstack([o.center[None], o.corners()]) - t) @ rotation  # (9, 3) camera coordinates
        if points[0, 2] <= 0.1:
            continue
        uv = (points[:, :2] / np.maximum(points[:, 2:], 1e-3)) @ k[:2, :2].T + k[:2, 2]  # (9, 2)
        if not (0 <= uv[0, 0] < width and 0 <= uv[0, 1] < height):
            continue
        x0, y0 = np.clip(uv[1:].min(axis=0), 0, [width, height])
        x1, y1 = np.clip(uv[1:].max(axis=0), 0, [width, height])
        out.append(
            Visibility(
                o.instance_id, (float(x0), float(y0), float(x1), float(y1)), int((x1 - x0) * (y1 - y0))
            )
        )
    return tuple(out)


def make_scene(
    objects: Sequence[SceneObject],
    poses: Sequence[np.ndarray],
    *,
    room_size: tuple[float, float] = (6.0, 5.0),
    scene_id: str = "toy",
    dataset: str = "synthetic",
    split: str = "train",
    fps: float = 10.0,
    visible: Sequence[Sequence[int]] | None = None,
    width: int = 640,
    height: int = 480,
) -> Scene:
    """A scene with a rectangular room ``[0, w] x [0, d]`` (floor at z = 0, 2.8 m high).

    Args:
        objects: the boxes.
        poses: (4, 4) camera-to-world pose of every video frame (frame i is video frame i).
        visible: instance ids visible in each frame; computed by projection when None.
    """
    w, d = room_size
    intrinsics = Intrinsics(
        fx=0.5 * width, fy=0.5 * width, cx=width / 2, cy=height / 2
    )  # 90 degree horizontal view
    frames = []
    for i, pose in enumerate(poses):
        if visible is None:
            seen = project_visibility(objects, pose, intrinsics, width, height)
        else:
            seen = tuple(Visibility(j, (0.0, 0.0, 10.0, 10.0), 100) for j in sorted(visible[i]))
        frames.append(
            Frame(
                index=i,
                timestamp=i / fps,
                cam_to_world=np.asarray(pose, float),
                intrinsics=intrinsics,
                visible=seen,
            )
        )
    return Scene(
        scene_id=scene_id,
        dataset=dataset,
        split=split,
        room=Room(
            floor_polygon=np.array([[0, 0], [w, 0], [w, d], [0, d]], float),
            floor_z=0.0,
            height=2.8,
            area_m2=w * d,
        ),
        objects=tuple(objects),
        video=VideoInfo(uri="video.mp4", fps=fps, num_frames=len(poses), width=width, height=height),
        frames=tuple(frames),
    )


def orbit_poses(
    center_xy: Sequence[float], radius: float, num_frames: int, height: float = 1.5
) -> list[np.ndarray]:
    """A camera circling ``center_xy`` at ``radius``, looking at the centre (one full turn)."""
    cx, cy = center_xy
    angles = np.linspace(0, 2 * np.pi, num_frames, endpoint=False)
    return [
        look_at((cx + radius * np.cos(a), cy + radius * np.sin(a), height), (cx, cy, 0.8)) for a in angles
    ]


def random_scene(
    rng: np.random.Generator,
    num_objects: int = 30,
    num_frames: int = 300,
    room_size: tuple[float, float] = (8.0, 6.0),
    scene_id: str = "random",
    split: str = "train",
) -> Scene:
    """A synthetic-like scene: ``num_objects`` boxes that do not interpenetrate (furniture, most of it
    against the walls, and small objects standing on furniture), 2 of every 3 categories unique, and a
    camera orbiting the room centre."""
    from shapely.geometry import Polygon

    w, d = room_size
    room = Polygon([(0, 0), (w, 0), (w, d), (0, d)])
    names = [f"category{i:02d}" for i in range((num_objects * 2) // 3)]
    objects: list[SceneObject] = []
    floor: list[tuple[Polygon, float]] = []  # footprints and top heights of floor-standing objects
    for _ in range(100 * num_objects):
        if len(objects) == num_objects:
            break
        category = names[len(objects) % len(names)]  # the first len(names) are new, later ones repeat
        if floor and rng.random() < 0.35:  # a small object on top of a piece of furniture
            support, top = floor[rng.integers(len(floor))]
            extent = rng.uniform([0.1, 0.1, 0.1], [0.4, 0.4, 0.4])
            x0, y0, x1, y1 = support.bounds
            center = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1), top + extent[2] / 2])
            candidate = box(len(objects), category, center, extent, float(rng.uniform(0, 360)))
            if support.contains(Polygon(candidate.corners()[[0, 2, 6, 4], :2])) and not any(
                np.all(np.abs(o.center - center) < (o.extent + extent) / 2) for o in objects
            ):
                objects.append(candidate)
            continue
        extent = rng.uniform([0.4, 0.3, 0.4], [1.6, 0.9, 1.8])
        yaw = (
            float(rng.choice([0.0, 90.0, 180.0, 270.0]))
            if rng.random() < 0.75
            else float(rng.uniform(0, 360))
        )
        center = np.array([rng.uniform(0.3, w - 0.3), rng.uniform(0.3, d - 0.3), extent[2] / 2])
        if yaw % 90 == 0:  # push it against the wall its local +y axis points to
            back = yaw_rotation(yaw)[:2, 1]
            gap = extent[1] / 2 + 0.02
            center[:2] = np.where(back < -0.5, gap, np.where(back > 0.5, np.array([w, d]) - gap, center[:2]))
        candidate = box(len(objects), category, center, extent, yaw)
        poly = Polygon(candidate.corners()[[0, 2, 6, 4], :2])
        if room.contains(poly) and all(poly.distance(p) > 0.05 for p, _ in floor):
            objects.append(candidate)
            floor.append((poly, extent[2]))
    poses = orbit_poses((w / 2, d / 2), radius=min(w, d) / 2 - 0.3, num_frames=num_frames)
    return make_scene(objects, poses, room_size=room_size, scene_id=scene_id, split=split, fps=10.0)


def transform_scene(scene: Scene, yaw_deg: float, shift: Sequence[float]) -> Scene:
    """The same scene rotated by ``yaw_deg`` about +Z and then translated by ``shift`` (x, y, z):
    objects, room, camera poses. Distances, directions and camera-relative answers must not change."""
    import dataclasses

    rotation, t = yaw_rotation(yaw_deg), np.asarray(shift, float)
    move = np.eye(4)
    move[:3, :3], move[:3, 3] = rotation, t
    return dataclasses.replace(
        scene,
        room=dataclasses.replace(
            scene.room,
            floor_polygon=scene.room.floor_polygon @ rotation[:2, :2].T + t[:2],
            floor_z=scene.room.floor_z + t[2],
        ),
        objects=tuple(
            dataclasses.replace(o, center=rotation @ o.center + t, rotation=rotation @ o.rotation)
            for o in scene.objects
        ),
        frames=tuple(dataclasses.replace(f, cam_to_world=move @ f.cam_to_world) for f in scene.frames),
    )


def write_scene_with_video(scene: Scene, root: str) -> str:
    """Writes ``scene.json`` and a video that matches it (its frame count and size; plain grey
    frames), as every job checks; returns the scene folder URI."""
    from vlm3r_core import storage
    from vlm3r_core.scene import write_scene
    from vlm3r_core.video import write_video_stream

    folder = write_scene(scene, root)
    frame = np.full((scene.video.height, scene.video.width, 3), 128, np.uint8)
    write_video_stream(
        storage.join(folder, scene.video.uri), (frame for _ in range(scene.video.num_frames)), scene.video.fps
    )
    return folder
