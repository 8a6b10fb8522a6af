"""Writers of tiny source scenes in each dataset's own on-disk format (ScanNet, ScanNet++, ARKitScenes).

Every scene is the same room in world (aligned) coordinates, so expected values can be computed by
hand: a 4 x 3 m floor at z = 0 with 2.5 m walls, and a table box centred at (2.0, 1.5, 0.4) with
sides 1.0 x 0.6 x 0.8 m (yaw 0 for ScanNet, 30 degrees for ScanNet++ and ARKitScenes). Cameras
stand in the room corners at 1.5 m and look at the table. Images are 32 x 24 solid colours.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.spatial.transform import Rotation

from tests.datagen import scene_builder
from tests.datagen.scene_builder import yaw_rotation as yaw_matrix

ROOM_X, ROOM_Y, ROOM_H = 4.0, 3.0, 2.5
TABLE_CENTER = np.array([2.0, 1.5, 0.4])
TABLE_EXTENT = np.array([1.0, 0.6, 0.8])
WIDTH, HEIGHT = 32, 24
FX = FY = 20.0
CX, CY = 16.0, 12.0
EYES = [np.array(e) for e in ([0.5, 0.5, 1.5], [3.5, 0.5, 1.5], [3.5, 2.5, 1.5], [0.5, 2.5, 1.5])]
COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220), (230, 230, 230)]


def look_at(eye: np.ndarray, target: np.ndarray = TABLE_CENTER) -> np.ndarray:
    """4x4 camera-to-world, OpenCV axes (x right, y down, z forward), world Z up."""
    return scene_builder.look_at(eye, target)


def project(point: np.ndarray, cam_to_world: np.ndarray) -> tuple[float, float]:
    """Pixel (u, v) of a world point."""
    p = np.linalg.inv(cam_to_world) @ np.append(point, 1.0)
    return FX * p[0] / p[2] + CX, FY * p[1] / p[2] + CY


def room_mesh() -> tuple[np.ndarray, np.ndarray]:
    """Floor (z = 0) and four walls: (V, 3) vertices and (F, 3) triangles."""
    x, y, h = ROOM_X, ROOM_Y, ROOM_H
    quads = [
        [(0, 0, 0), (x, 0, 0), (x, y, 0), (0, y, 0)],
        [(0, 0, 0), (x, 0, 0), (x, 0, h), (0, 0, h)],
        [(x, 0, 0), (x, y, 0), (x, y, h), (x, 0, h)],
        [(x, y, 0), (0, y, 0), (0, y, h), (x, y, h)],
        [(0, y, 0), (0, 0, 0), (0, 0, h), (0, y, h)],
    ]
    verts = np.array([p for q in quads for p in q], dtype=np.float64)
    tris = np.array(
        [[4 * i, 4 * i + 1, 4 * i + 2] for i in range(5)] + [[4 * i, 4 * i + 2, 4 * i + 3] for i in range(5)]
    )
    return verts, tris


def box_mesh(center: np.ndarray, extent: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed box: 8 vertices, 12 triangles."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    verts = center + (signs * extent / 2) @ rotation.T
    faces = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    tris = np.array([t for a, b, c, d in faces for t in ((a, b, c), (a, c, d))])
    return verts, tris


def scene_mesh(table_yaw_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Room plus table: vertices, triangles, and per-vertex part (0 floor, 1 walls, 2 table)."""
    rv, rt = room_mesh()
    bv, bt = box_mesh(TABLE_CENTER, TABLE_EXTENT, yaw_matrix(table_yaw_deg))
    parts = np.array([0] * 4 + [1] * 16 + [2] * 8)
    return np.concatenate([rv, bv]), np.concatenate([rt, bt + len(rv)]), parts


def write_ply(path: Path, verts: np.ndarray, tris: np.ndarray, binary: bool = True) -> None:
    """A PLY with ScanNet's layout: x y z float, red green blue alpha uchar; face list uchar int."""
    header = (
        f"ply\nformat {'binary_little_endian' if binary else 'ascii'} 1.0\ncomment tiny fixture\n"
        f"element vertex {len(verts)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        f"element face {len(tris)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    if binary:
        v = np.zeros(len(verts), dtype=[("xyz", "<f4", (3,)), ("rgba", "u1", (4,))])
        v["xyz"], v["rgba"] = verts, 200
        f = np.zeros(len(tris), dtype=[("n", "u1"), ("idx", "<i4", (3,))])
        f["n"], f["idx"] = 3, tris
        path.write_bytes(header.encode() + v.tobytes() + f.tobytes())
    else:
        rows = [f"{a:.6f} {b:.6f} {c:.6f} 200 200 200 255" for a, b, c in verts]
        rows += [f"3 {a} {b} {c}" for a, b, c in tris]
        path.write_text(header + "\n".join(rows) + "\n")


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (WIDTH, HEIGHT)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), colour, dtype=np.uint8)).save(path)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


# ----------------------------------------------------------------------------------------------
# ScanNet v2
# ----------------------------------------------------------------------------------------------

SCANNET_ALIGNMENT = np.eye(4)
SCANNET_ALIGNMENT[:3, :3] = yaw_matrix(30.0)
SCANNET_ALIGNMENT[:3, 3] = [1.0, -2.0, 0.5]
SCANNET_FRAME_NUMBERS = [0, 10, 20, 30]  # SensReader export with --frame_skip 10
SCANNET_BAD_FRAME = 20  # its pose file holds -inf


def write_scannet_scene(
    scans: Path, scene_id: str, aligned: bool = True, colour_size: tuple[int, int] = (WIDTH, HEIGHT)
) -> Path:
    """``scans/<scene_id>/`` with mesh, segments, aggregation, ``<scene_id>.txt`` and exported frames.

    The mesh and poses are stored in the raw frame: raw = inverse(SCANNET_ALIGNMENT) @ world.
    With ``aligned=False`` the ``.txt`` has no ``axisAlignment`` (and the raw frame is the world).
    ``colour_size`` (W, H) scales the colour images and their intrinsics (ScanNet's are 1296x968).
    """
    d = scans / scene_id
    d.mkdir(parents=True)
    to_raw = np.linalg.inv(SCANNET_ALIGNMENT) if aligned else np.eye(4)
    verts, tris, parts = scene_mesh(0.0)
    write_ply(d / f"{scene_id}_vh_clean_2.ply", verts @ to_raw[:3, :3].T + to_raw[:3, 3], tris)
    seg_ids = np.array([100, 200, 300])[parts]  # segment id per vertex
    write_json(
        d / f"{scene_id}_vh_clean_2.0.010000.segs.json",
        {"params": {}, "sceneId": scene_id, "segIndices": seg_ids.tolist()},
    )
    groups = [
        {"id": 0, "objectId": 0, "label": "floor", "segments": [100]},
        {"id": 1, "objectId": 1, "label": "wall", "segments": [200]},
        {"id": 2, "objectId": 2, "label": "table", "segments": [300]},
        {"id": 3, "objectId": 3, "label": "ghost", "segments": [999]},  # no vertices: skipped
    ]
    write_json(
        d / f"{scene_id}.aggregation.json",
        {"sceneId": f"scannet.{scene_id}", "appId": "fixture", "segGroups": groups},
    )
    lines = [
        f"colorHeight = {colour_size[1]}",
        f"colorWidth = {colour_size[0]}",
        "sceneType = Living room / Lounge",
    ]
    if aligned:
        lines.insert(0, "axisAlignment = " + " ".join(f"{x:.9f}" for x in SCANNET_ALIGNMENT.reshape(-1)))
    (d / f"{scene_id}.txt").write_text("\n".join(lines) + "\n")
    k = np.array([[FX, 0, CX, 0], [0, FY, CY, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    k[0] *= colour_size[0] / WIDTH
    k[1] *= colour_size[1] / HEIGHT
    (d / "intrinsic").mkdir()
    np.savetxt(d / "intrinsic" / "intrinsic_color.txt", k, fmt="%.6f")
    (d / "pose").mkdir()
    for i, number in enumerate(SCANNET_FRAME_NUMBERS):
        write_image(d / "color" / f"{number}.jpg", COLOURS[i], colour_size)
        if number == SCANNET_BAD_FRAME:
            (d / "pose" / f"{number}.txt").write_text("\n".join(["-inf -inf -inf -inf"] * 4) + "\n")
        else:
            np.savetxt(d / "pose" / f"{number}.txt", to_raw @ look_at(EYES[i]), fmt="%.9f")
    return d


def write_scannet_instance_masks(scan: Path, masks: dict[int, np.ndarray], extracted: bool = False) -> Path:
    """ScanNet's filtered 2D instance masks of a scan: ``{frame number: (h, w) uint8}``.

    Written as the release ships them, ``<scene_id>_2d-instance-filt.zip`` with members
    ``instance-filt/<frame>.png`` (8-bit greyscale; value = segGroup ``id`` + 1, 0 = none), or with
    ``extracted=True`` as the unzipped ``instance-filt/`` folder. Returns the zip or the folder.
    """
    pngs = {}
    for number, mask in masks.items():
        buf = io.BytesIO()
        Image.fromarray(np.asarray(mask, dtype=np.uint8)).save(buf, format="PNG")  # 2-D uint8: mode L
        pngs[f"instance-filt/{number}.png"] = buf.getvalue()
    if extracted:
        for name, data in pngs.items():
            (scan / name).parent.mkdir(parents=True, exist_ok=True)
            (scan / name).write_bytes(data)
        return scan / "instance-filt"
    path = scan / f"{scan.name}_2d-instance-filt.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in pngs.items():
            archive.writestr(name, data)
    return path


# ----------------------------------------------------------------------------------------------
# ScanNet++
# ----------------------------------------------------------------------------------------------

SCANNETPP_TABLE_YAW = 30.0
SCANNETPP_BAD_FRAME = 2  # aligned_pose holds NaN


def write_scannetpp_scene(data: Path, scene_id: str, video: bool = True) -> Path:
    """``data/<scene_id>/`` with scans/ (mesh, segments, segments_anno) and iphone/ (poses, frames).

    ``video=True`` stores the frames as ``iphone/rgb.mp4``, otherwise as ``iphone/rgb/frame_%06d.jpg``.
    """
    from vlm3r_core.video import write_video

    d = data / scene_id
    verts, tris, parts = scene_mesh(SCANNETPP_TABLE_YAW)
    write_ply(d / "scans" / "mesh_aligned_0.05.ply", verts, tris)
    write_json(
        d / "scans" / "segments.json", {"segIndices": list(range(len(verts)))}
    )  # one segment per vertex
    rotation = yaw_matrix(SCANNETPP_TABLE_YAW)
    groups = [
        {"id": 1, "objectId": 1, "label": "floor", "segments": np.flatnonzero(parts == 0).tolist(),
         "obb": {"centroid": [2, 1.5, 0], "axesLengths": [4, 3, 0.01], "normalizedAxes": np.eye(3).reshape(-1).tolist()}},
        {"id": 2, "objectId": 2, "label": "table", "segments": np.flatnonzero(parts == 2).tolist(),
         "obb": {"centroid": TABLE_CENTER.tolist(), "axesLengths": TABLE_EXTENT.tolist(),
                 "normalizedAxes": rotation.T.reshape(-1).tolist()}},  # rows = box axes
    ]  # fmt: skip
    write_json(d / "scans" / "segments_anno.json", {"sceneId": scene_id, "segGroups": groups})
    entries = {}
    for i, eye in enumerate(EYES):
        pose = look_at(eye)
        if i == SCANNETPP_BAD_FRAME:
            pose = np.full((4, 4), np.nan)
        entries[f"frame_{i:06d}"] = {
            "timestamp": 1000.0 + i / 60.0,
            "intrinsic": [[FX, 0, CX], [0, FY, CY], [0, 0, 1]],
            "pose": np.eye(4).tolist(),
            "aligned_pose": pose.tolist(),
        }
    write_json(d / "iphone" / "pose_intrinsic_imu.json", entries)
    if video:
        frames = np.stack([np.full((HEIGHT, WIDTH, 3), c, dtype=np.uint8) for c in COLOURS])
        write_video(str(d / "iphone" / "rgb.mp4"), frames, fps=60)
    else:
        for i, colour in enumerate(COLOURS):
            write_image(d / "iphone" / "rgb" / f"frame_{i:06d}.jpg", colour)
    return d


# ----------------------------------------------------------------------------------------------
# ARKitScenes
# ----------------------------------------------------------------------------------------------

ARKIT_TABLE_YAW = 30.0
ARKIT_TIMES = [100.0, 100.1, 100.2, 100.3]
ARKIT_NO_POSE_FRAME = 3  # the trajectory has no pose near this frame's time
# How the device was held: the recorded camera is the upright look_at camera rolled about its optical
# axis by this angle, so that world up appears at the named side of the recorded image.
ARKIT_SKY_ROLL_DEG = {"Up": 0.0, "Left": 90.0, "Down": 180.0, "Right": -90.0}
ARKIT_DOT = (4, 2)  # (column, row) of the top-left pixel of a white 2x2 dot in every recorded frame
ARKIT_DOT_CENTRE = (ARKIT_DOT[0] + 1.0, ARKIT_DOT[1] + 1.0)  # its centre (u, v), continuous pixels


def arkit_recorded_pose(eye: np.ndarray, sky_direction: str = "Up") -> np.ndarray:
    """4x4 camera-to-world of the recorded (possibly sideways) ARKit camera at ``eye``."""
    roll = np.eye(4)
    roll[:3, :3] = Rotation.from_euler("z", ARKIT_SKY_ROLL_DEG[sky_direction], degrees=True).as_matrix()
    return look_at(eye) @ roll


def write_arkit_scene(fold: Path, video_id: str, sky_direction: str = "Up") -> Path:
    """``3dod/<fold>/<video_id>/`` with annotation, mesh (ascii PLY), trajectory, frames, pincams.

    Frames are 32 x 24 (landscape, as ARKit records) with a white dot at ``ARKIT_DOT``; the camera
    is held so that the sky is at ``sky_direction`` in them (see ``ARKIT_SKY_ROLL_DEG``).
    """
    d = fold / video_id
    rotation = yaw_matrix(ARKIT_TABLE_YAW)
    anno = {
        "data": [
            {"uid": "a1b2", "label": "table", "segments": {"obbAligned": {
                "centroid": TABLE_CENTER.tolist(), "axesLengths": TABLE_EXTENT.tolist(),
                "normalizedAxes": rotation.T.reshape(-1).tolist()}}},
        ],
        "stats": {}, "comment": "", "confirm": True, "skipped": False,
    }  # fmt: skip
    write_json(d / f"{video_id}_3dod_annotation.json", anno)
    verts, tris, _ = scene_mesh(ARKIT_TABLE_YAW)
    write_ply(d / f"{video_id}_3dod_mesh.ply", verts, tris, binary=False)
    frames = d / f"{video_id}_frames"
    traj = []
    for i, (t, eye) in enumerate(zip(ARKIT_TIMES, EYES, strict=True)):
        image = np.full((HEIGHT, WIDTH, 3), COLOURS[i], dtype=np.uint8)
        image[ARKIT_DOT[1] : ARKIT_DOT[1] + 2, ARKIT_DOT[0] : ARKIT_DOT[0] + 2] = 255
        (frames / "lowres_wide").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(frames / "lowres_wide" / f"{video_id}_{t:.3f}.png")
        intr = frames / "lowres_wide_intrinsics" / f"{video_id}_{t:.3f}.pincam"
        intr.parent.mkdir(parents=True, exist_ok=True)
        intr.write_text(f"{WIDTH} {HEIGHT} {FX} {FY} {CX} {CY}\n")
        if i == ARKIT_NO_POSE_FRAME:
            continue
        world_to_cam = np.linalg.inv(arkit_recorded_pose(eye, sky_direction))
        rotvec = Rotation.from_matrix(world_to_cam[:3, :3]).as_rotvec()
        t_pose = t + (0.002 if i == 1 else 0.0)  # poses and frames differ by ~ms in the release
        traj.append(" ".join(f"{x:.9f}" for x in [t_pose, *rotvec, *world_to_cam[:3, 3]]))
    (frames / "lowres_wide.traj").write_text("\n".join(traj) + "\n")
    return d
