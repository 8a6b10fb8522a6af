"""ARKitScenes (3DOD release) reader: one ``3dod/<Training|Validation>/<video_id>/`` folder.

Files read:

- ``<video_id>_3dod_annotation.json``: ``data: [{uid, label, segments: {obbAligned: {centroid,
  axesLengths, normalizedAxes}}}]``; the rows of ``normalizedAxes`` are the box axes (yaw-only).
- ``<video_id>_3dod_mesh.ply``: ARKit mesh in the same world frame (gravity-aligned, Z up, metres).
- ``<video_id>_frames/lowres_wide.traj``: one line per pose ``timestamp rx ry rz tx ty tz``:
  axis-angle (radians) and translation (m) of the **world-to-camera** transform; inverted here to
  camera-to-world (camera axes x right, y down, z forward).
- ``<video_id>_frames/lowres_wide/<video_id>_<timestamp>.png``: RGB frames (256x192, ~10 fps).
- ``<video_id>_frames/lowres_wide_intrinsics/<video_id>_<timestamp>.pincam``: one line
  ``width height fx fy cx cy``.
- optionally the dataset's ``metadata.csv`` (``3dod/metadata.csv`` in the official download):
  ``video_id, visit_id, fold, sky_direction, ...``, read by :func:`read_sky_directions`.

Frames are matched to poses and intrinsics by timestamp as the official loader does: poses within
5 ms, intrinsics within 1.5 ms (file names round to 1 ms). Unmatched frames are dropped and counted.
Instance ids are the positions in ``data``; ``extra["source"]["instance_uids"]`` maps them to the
annotation uids. Visibility: the mesh is ray-cast per frame; a hit belongs to the smallest box
holding its triangle.

Upright frames: many videos were recorded with the device sideways or upside down. ``sky_direction``
(``Up``/``Left``/``Down``/``Right``: where the sky is in the recorded image) turns every frame
upright as the dataset's own loader does (``depth_upsampling/dataset.py``: ``Left`` 90 degrees
clockwise, ``Right`` 90 degrees counter-clockwise, ``Down`` 180 degrees), and the cameras with them
(:func:`turn_camera`), so poses, intrinsics, video size and 2D boxes all describe the turned image.
Without it the frames stay as recorded and the reader logs which way the poses say the sky is.
"""

from __future__ import annotations

import csv
import io
from collections import Counter

import numpy as np
from scipy.spatial.transform import Rotation

from datagen.readers.boxes import box_from_obb, room_from_mesh
from datagen.readers.common import ReadResult, SourceFormatError, logger
from datagen.readers.files import image_size, read_json_object, require
from datagen.readers.frames import SourceFrame, build_result, video_fps
from datagen.readers.instances import VisibilityRenderer, triangle_labels_from_boxes
from datagen.readers.ply import read_ply_mesh
from vlm3r_core import storage
from vlm3r_core.scene import Intrinsics, SceneObject

DATASET = "arkitscenes"
POSE_TOLERANCE_S = 0.005
INTRINSICS_TOLERANCE_S = 0.0015
DROP_NO_POSE = "no pose within 5 ms"
DROP_NO_INTRINSICS = "no intrinsics file"
# sky_direction -> counter-clockwise quarter turns (np.rot90 k) that make the recorded frame upright
UPRIGHT_QUARTER_TURNS = {"Up": 0, "Right": 1, "Down": 2, "Left": 3}


def read_trajectory(uri: str) -> tuple[np.ndarray, np.ndarray]:
    """Parses a ``.traj`` file.

    Returns:
        timestamps (P,) seconds, cam_to_world (P, 4, 4) = inverse of each line's world-to-camera.
    """
    times, poses = [], []
    for n, line in enumerate(storage.read_text(uri).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = [float(x) for x in line.split()]
        except ValueError as e:
            raise SourceFormatError(uri, f"line {n}: not numeric ({e})") from e
        if len(values) != 7:
            raise SourceFormatError(
                uri, f"line {n}: expected 7 numbers (t rx ry rz tx ty tz), got {len(values)}"
            )
        rotation = Rotation.from_rotvec(values[1:4]).as_matrix()  # world -> camera
        translation = np.asarray(values[4:7])
        cam_to_world = np.eye(4)
        cam_to_world[:3, :3] = rotation.T
        cam_to_world[:3, 3] = -rotation.T @ translation
        times.append(values[0])
        poses.append(cam_to_world)
    if not times:
        raise SourceFormatError(uri, "no poses")
    order = np.argsort(times)
    return np.asarray(times)[order], np.stack(poses)[order]


def read_pincam(uri: str) -> tuple[int, int, Intrinsics]:
    """``(width, height, intrinsics)`` from a ``.pincam`` file (``w h fx fy cx cy``)."""
    try:
        w, h, fx, fy, cx, cy = (float(x) for x in storage.read_text(uri).split())
    except ValueError as e:
        raise SourceFormatError(uri, f"expected 6 numbers 'width height fx fy cx cy' ({e})") from e
    return int(w), int(h), Intrinsics(fx=fx, fy=fy, cx=cx, cy=cy)


def turn_camera(
    cam_to_world: np.ndarray, k: Intrinsics, width: int, height: int, quarter_turns: int
) -> tuple[np.ndarray, Intrinsics]:
    """The camera of a ``width`` x ``height`` image after ``np.rot90(image, quarter_turns)``.

    ``quarter_turns`` q counts counter-clockwise quarter turns (q = 3 is cv2.ROTATE_90_CLOCKWISE).
    A pixel (u, v) (continuous: pixel column i spans [i, i + 1]) moves to ``A @ (u, v, 1)``::

        q = 1 (Right: 90 deg counter-clockwise): (u, v) -> (v, W - u)
        q = 2 (Down: 180 deg):                   (u, v) -> (W - u, H - v)
        q = 3 (Left: 90 deg clockwise):          (u, v) -> (H - v, u)

    i.e. ``A = [[c, s, tx], [-s, c, ty], [0, 0, 1]]`` with (c, s) = (cos, sin)(q * 90 deg) and
    (tx, ty) the shift that keeps the turned image at x, y >= 0. The camera turns about its optical
    axis by ``R_z`` = rotation by q * 90 deg about z: a point at ``p`` in the turned camera is at
    ``R_z @ p`` in the recorded one, so ``K' = A @ K @ R_z`` (again a pinhole matrix: fx and fy swap
    for odd q, the principal point moves like a pixel) and ``cam_to_world' = cam_to_world @ R_z``.
    Then ``K' p / z = A K (R_z p) / z``: every world point lands where its recorded pixel went.

    Returns:
        cam_to_world' (4, 4) and K'; the turned image is H x W for odd q, else W x H.
    """
    c, s = ((1, 0), (0, 1), (-1, 0), (0, -1))[quarter_turns]  # cos, sin of q * 90 deg
    tx, ty = ((0, 0), (0, width), (width, height), (height, 0))[quarter_turns]
    pixel_map = np.array([[c, s, tx], [-s, c, ty], [0, 0, 1]], dtype=np.float64)  # A
    r_z = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=np.float64)
    k_new = pixel_map @ k.matrix() @ r_z
    turn = np.eye(4)
    turn[:3, :3] = r_z
    return cam_to_world @ turn, Intrinsics(
        fx=float(k_new[0, 0]), fy=float(k_new[1, 1]), cx=float(k_new[0, 2]), cy=float(k_new[1, 2])
    )


def sky_direction_from_poses(cam_to_world: np.ndarray) -> str:
    """Where world up (+Z) points in the images of (P, 4, 4) camera-to-world poses, by majority.

    One of ``Up``/``Left``/``Down``/``Right``, per frame the image axis closest to world up (as the
    dataset's ``threedod/benchmark_scripts/rectify_im.py`` decides). ``metadata.csv`` is known to be
    wrong for some videos, so the reader warns when the two disagree.
    """
    up = cam_to_world[:, 2, :3]  # (P, 3) world +Z in camera axes (x right, y down)
    up = up[np.all(np.isfinite(up), axis=1)]
    scores = np.stack([-up[:, 1], -up[:, 0], up[:, 1], up[:, 0]], axis=1)  # (P, 4): Up Left Down Right
    votes = np.bincount(np.argmax(scores, axis=1), minlength=4)
    return ("Up", "Left", "Down", "Right")[int(np.argmax(votes))]


def read_sky_directions(uri: str) -> dict[str, str]:
    """``{video_id: sky_direction}`` from the dataset's ``metadata.csv`` (values are checked when used)."""
    rows = csv.DictReader(io.StringIO(storage.read_text(uri)))
    if not rows.fieldnames or not {"video_id", "sky_direction"} <= set(rows.fieldnames):
        raise SourceFormatError(uri, f"needs columns video_id and sky_direction, has {rows.fieldnames}")
    out = {}
    for row in rows:
        out[(row["video_id"] or "").strip()] = (row["sky_direction"] or "").strip()
    return out


def _timestamped_files(folder: str, video_id: str, suffix: str) -> tuple[np.ndarray, list[str]]:
    """Files ``<video_id>_<timestamp><suffix>`` in ``folder``, sorted by timestamp."""
    found = []
    for uri in storage.list_files(folder, suffix, recursive=False):
        stem = uri.rsplit("/", 1)[-1][: -len(suffix)]
        prefix, _, stamp = stem.rpartition("_")
        try:
            found.append((float(stamp), uri))
        except ValueError as e:
            raise SourceFormatError(uri, f"file name is not {video_id}_<timestamp>{suffix}") from e
    found.sort()
    return np.asarray([t for t, _ in found]), [u for _, u in found]


def _nearest(times: np.ndarray, t: float, tolerance: float) -> int | None:
    i = int(np.searchsorted(times, t))
    best = min((j for j in (i - 1, i) if 0 <= j < len(times)), key=lambda j: abs(times[j] - t), default=None)
    return best if best is not None and abs(times[best] - t) <= tolerance else None


def read_objects(anno_uri: str) -> tuple[list[SceneObject], dict[int, str], int]:
    """Objects from the annotation's oriented boxes, ``{instance_id: uid}``, and the skipped count."""
    data = require(read_json_object(anno_uri), "data", anno_uri)
    if not isinstance(data, list):
        raise SourceFormatError(anno_uri, f"'data' must be a list, got {type(data).__name__}")
    objects, uids, skipped = [], {}, 0
    for i, item in enumerate(data):
        where = f"data[{i}]."
        label = str(require(item, "label", anno_uri, where)).strip()
        obb = require(require(item, "segments", anno_uri, where), "obbAligned", anno_uri, f"{where}segments.")
        try:
            center, extent, rotation = box_from_obb(obb, anno_uri, f"{where}segments.obbAligned")
        except SourceFormatError as e:
            logger.warning("object %d (%s) skipped: %s", i, label, e)
            skipped += 1
            continue
        objects.append(SceneObject(i, label, center, extent, rotation))
        uids[i] = str(item.get("uid", ""))
    return objects, uids, skipped


def read_scene(
    source_dir: str, scene_id: str, split: str, frame_stride: int = 1, sky_direction: str | None = None
) -> ReadResult:
    """Reads one ARKitScenes 3DOD video folder (see the module docstring for the files).

    ``sky_direction`` (``Up``/``Left``/``Down``/``Right``, from ``metadata.csv``) turns the frames
    upright; ``None`` keeps them as recorded.
    """
    if sky_direction is not None and sky_direction not in UPRIGHT_QUARTER_TURNS:
        raise ValueError(
            f"scene {scene_id!r}: sky_direction must be one of {list(UPRIGHT_QUARTER_TURNS)}, "
            f"got {sky_direction!r}"
        )
    turns = UPRIGHT_QUARTER_TURNS[sky_direction] if sky_direction is not None else 0
    root = source_dir.rstrip("/")
    objects, uids, skipped = read_objects(storage.join(root, f"{scene_id}_3dod_annotation.json"))
    mesh_uri = storage.join(root, f"{scene_id}_3dod_mesh.ply")
    mesh = read_ply_mesh(mesh_uri)

    frames_dir = storage.join(root, f"{scene_id}_frames")
    pose_times, cam_to_world = read_trajectory(storage.join(frames_dir, "lowres_wide.traj"))
    image_times, images = _timestamped_files(storage.join(frames_dir, "lowres_wide"), scene_id, ".png")
    if not images:
        raise SourceFormatError(
            storage.join(frames_dir, "lowres_wide"), "no frames (<video_id>_<timestamp>.png)"
        )
    intr_times, intr_files = _timestamped_files(
        storage.join(frames_dir, "lowres_wide_intrinsics"), scene_id, ".pincam"
    )

    width, height = image_size(images[0])
    pose_sky = sky_direction_from_poses(cam_to_world)
    if sky_direction is None:
        (logger.info if pose_sky == "Up" else logger.warning)(
            "%s/%s: frames stay as recorded (no sky_direction given; the poses put the sky %s)",
            DATASET, scene_id, pose_sky,
        )  # fmt: skip
    elif sky_direction != pose_sky:
        logger.warning(
            "%s/%s: sky_direction is %s but the poses put the sky %s; turning by sky_direction",
            DATASET, scene_id, sky_direction, pose_sky,
        )  # fmt: skip

    drops: Counter = Counter()
    candidates, times = [], []
    for t, image in list(zip(image_times.tolist(), images, strict=True))[::frame_stride]:
        pose_i = _nearest(pose_times, t, POSE_TOLERANCE_S)
        intr_i = _nearest(intr_times, t, INTRINSICS_TOLERANCE_S)
        if pose_i is None:
            drops[DROP_NO_POSE] += 1
            continue
        if intr_i is None:
            drops[DROP_NO_INTRINSICS] += 1
            continue
        _, _, intrinsics = read_pincam(intr_files[intr_i])
        pose, intrinsics = turn_camera(cam_to_world[pose_i], intrinsics, width, height, turns)
        candidates.append(SourceFrame(f"{t:.3f}", pose, intrinsics, image))
        times.append(t)
    if turns % 2:
        width, height = height, width
    return build_result(
        scene_id=scene_id,
        dataset=DATASET,
        split=split,
        source_uri=root,
        room=room_from_mesh(mesh, mesh_uri),
        objects=objects,
        objects_skipped=skipped,
        candidates=candidates,
        renderer=VisibilityRenderer(mesh, triangle_labels_from_boxes(mesh, objects)),
        image_width=width,
        image_height=height,
        fps=video_fps(times),
        drop_reasons=drops,
        extra={
            "instance_uids": {str(k): v for k, v in uids.items()},
            "sky_direction": sky_direction,  # applied (frames turned upright), or None: as recorded
            "pose_sky_direction": pose_sky,  # where the recorded poses put the sky
        },
        quarter_turns=turns,
    )
