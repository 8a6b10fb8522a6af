"""3D exports of CUT3R: coloured point clouds (PLY, GLB) and camera trajectories (JSON).

Legend: T frames, (G, G) CUT3R input size (square, as the processor resizes), n points kept per
frame, M points in a cloud.

Coordinates. CUT3R's world is the camera frame of the first frame it consumed (the first frame of
the video, or of the live session): origin at that camera's centre, OpenCV axes (x right, y down,
z forward), metres (the released model is metric, cut3r-reference.md §2.3). It is *not* the
Z-up world of the scene contract: CUT3R does not know where gravity points. Every export keeps
the points and poses in that frame and says so (`COORDINATE_FRAME`, written into the trajectory
JSON and the GLB's `asset.extras`); only the GLB's root node carries a rotation, diag(1, -1, -1),
so that glTF viewers (Y up) show the first view upright.

Pipeline: the point heads give world points and confidences (>= 1) per pixel of each frame
(`Cut3rPointmaps.points_in_world`, `confidence_in_world`); each point takes the colour of its input
pixel (the frame as CUT3R saw it, resized to G x G); points under `confidence_threshold` are
dropped and the rest are averaged per voxel of `voxel_size_m` (open3d). Poses come from the pose
head ([t, q], `heads.pose_to_cam_to_world`).

Files (`Reconstruction.write(folder)`): `points.ply` (open3d, binary, float positions and uint8
colours), `points.glb` (binary glTF 2.0 written here: one mesh primitive in mode POINTS with
POSITION float VEC3 and COLOR_0 normalised uint8 VEC4) and `trajectory.json`.
"""

from __future__ import annotations

import json
import math
import os
import struct
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vlm3r_core import storage
from vlm3r_core.geometry.cut3r import Cut3r
from vlm3r_core.geometry.heads import pose_to_cam_to_world
from vlm3r_core.vlm.processor import resize_frames

__all__ = [
    "COORDINATE_FRAME",
    "CameraTrajectory",
    "PointCloud",
    "Reconstruction",
    "ReconstructionConfig",
    "build_point_cloud",
    "encode_glb",
    "pixels_to_colors",
    "reconstruct_video",
    "subsample_pixels",
    "write_ply",
]

COORDINATE_FRAME = {
    "name": "cut3r_first_camera",
    "description": (
        "CUT3R world: the camera frame of the first frame consumed; origin at that camera's centre. "
        "Not a gravity-aligned (Z-up) world."
    ),
    "axes": "OpenCV: x right, y down, z forward",
    "units": "metres",
}

# glTF 2.0 constants (Khronos glTF 2.0 specification).
_GLB_MAGIC, _GLB_VERSION = 0x46546C67, 2
_CHUNK_JSON, _CHUNK_BIN = 0x4E4F534A, 0x004E4942
_FLOAT, _UNSIGNED_BYTE, _ARRAY_BUFFER, _POINTS = 5126, 5121, 34962, 0
# OpenCV (y down, z forward) -> glTF (y up, z towards the viewer); column-major as glTF stores it.
_OPENCV_TO_GLTF = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


@dataclass(frozen=True)
class ReconstructionConfig:
    """How point maps become a cloud.

    Args:
        confidence_threshold: keep points whose world confidence is at least this (CUT3R's
            confidence is 1 + exp(c) >= 1, so 1.0 keeps every point).
        voxel_size_m: side of the voxels points are averaged in (metres); 0 keeps every point.
        max_points_per_frame: keep at most this many pixels of each frame before filtering
            (`subsample_pixels`, a uniform subset); 0 keeps all G * G.
    """

    confidence_threshold: float = 3.0
    voxel_size_m: float = 0.02
    max_points_per_frame: int = 0

    def __post_init__(self) -> None:
        if not math.isfinite(self.confidence_threshold) or self.confidence_threshold < 1.0:
            raise ValueError(
                f"confidence_threshold must be a finite number >= 1 (CUT3R confidences are >= 1), "
                f"got {self.confidence_threshold}"
            )
        if not math.isfinite(self.voxel_size_m) or self.voxel_size_m < 0:
            raise ValueError(f"voxel_size_m must be >= 0 (0 disables downsampling), got {self.voxel_size_m}")
        if self.max_points_per_frame < 0:
            raise ValueError(f"max_points_per_frame must be >= 0 (0 keeps all), got {self.max_points_per_frame}")


@dataclass(frozen=True)
class PointCloud:
    """A coloured point cloud in CUT3R's world (`COORDINATE_FRAME`).

    Attributes:
        points: (M, 3) float32 metres.
        colors: (M, 3) uint8 RGB.
    """

    points: np.ndarray
    colors: np.ndarray

    def __post_init__(self) -> None:
        m = self.points.shape[0]
        if self.points.shape != (m, 3) or self.colors.shape != (m, 3):
            raise ValueError(f"points must be (M, 3) and colors (M, 3), got {self.points.shape}, {self.colors.shape}")
        if self.points.dtype != np.float32 or self.colors.dtype != np.uint8:
            raise ValueError(f"points must be float32 and colors uint8, got {self.points.dtype}, {self.colors.dtype}")

    def __len__(self) -> int:
        return self.points.shape[0]


@dataclass(frozen=True)
class CameraTrajectory:
    """Camera poses of frames in CUT3R's world (`COORDINATE_FRAME`).

    Attributes:
        cam_to_world: (T, 4, 4) float64, camera-to-world in metres; the camera centre is `[:3, 3]`.
        timestamps: T seconds.
        frame_indices: T frame numbers (in the video, or push counters of a live session).
    """

    cam_to_world: np.ndarray
    timestamps: tuple[float, ...]
    frame_indices: tuple[int, ...]

    def __post_init__(self) -> None:
        t = self.cam_to_world.shape[0]
        if self.cam_to_world.shape != (t, 4, 4) or len(self.timestamps) != t or len(self.frame_indices) != t:
            raise ValueError(
                f"cam_to_world must be (T, 4, 4) with T timestamps and frame indices, got "
                f"{self.cam_to_world.shape}, {len(self.timestamps)}, {len(self.frame_indices)}"
            )

    @classmethod
    def from_poses(
        cls, poses: torch.Tensor, timestamps: Sequence[float], frame_indices: Sequence[int]
    ) -> CameraTrajectory:
        """From CUT3R poses (T, 7) [t, q (w, x, y, z)]."""
        matrices = pose_to_cam_to_world(poses.detach().double().cpu()).numpy()  # (T, 4, 4)
        return cls(matrices, tuple(float(t) for t in timestamps), tuple(int(i) for i in frame_indices))

    def to_json(self) -> dict:
        """The trajectory as JSON: the coordinate frame, the convention and one entry per camera."""
        return {
            "format": "vlm3r-camera-trajectory",
            "version": 1,
            "coordinate_frame": COORDINATE_FRAME,
            "pose_convention": (
                "cam_to_world: 4x4 row-major, maps camera coordinates (OpenCV) to the world; "
                "the camera centre is the translation column"
            ),
            "cameras": [
                {"frame_index": i, "timestamp_s": t, "cam_to_world": m.tolist()}
                for i, t, m in zip(self.frame_indices, self.timestamps, self.cam_to_world, strict=True)
            ],
        }


@dataclass(frozen=True)
class Reconstruction:
    """A point cloud and the trajectory of the cameras that saw it."""

    cloud: PointCloud
    trajectory: CameraTrajectory

    def write(self, folder: str) -> dict[str, str]:
        """Writes `points.ply`, `points.glb` and `trajectory.json` under a folder URI (each atomic).

        Returns:
            {"ply": uri, "glb": uri, "trajectory": uri}.
        """
        uris = {
            "ply": storage.join(folder, "points.ply"),
            "glb": storage.join(folder, "points.glb"),
            "trajectory": storage.join(folder, "trajectory.json"),
        }
        write_ply(self.cloud, uris["ply"])
        storage.write_bytes(uris["glb"], encode_glb(self.cloud))
        storage.write_json(uris["trajectory"], {**self.trajectory.to_json(), "points": len(self.cloud)})
        return uris


def pixels_to_colors(pixels: torch.Tensor) -> torch.Tensor:
    """CUT3R input pixels (T, 3, G, G) in [-1, 1] -> colours (T, G, G, 3) uint8."""
    return ((pixels.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def subsample_pixels(count: int, limit: int) -> torch.Tensor:
    """Indices of at most `limit` of `count` flattened pixels, spread uniformly (0 keeps all)."""
    if limit <= 0 or limit >= count:
        return torch.arange(count)
    return torch.linspace(0, count - 1, limit).round().long()  # (limit,), strictly increasing


def build_point_cloud(
    points: np.ndarray, colors: np.ndarray, confidence: np.ndarray, config: ReconstructionConfig
) -> PointCloud:
    """Confidence filter and voxel averaging.

    Args:
        points: (M, 3) world points (metres), colors: (M, 3) uint8, confidence: (M,).

    Raises:
        ValueError: no finite point reaches the confidence threshold.
    """
    import open3d as o3d

    points = np.asarray(points, np.float32).reshape(-1, 3)
    colors = np.asarray(colors, np.uint8).reshape(-1, 3)
    confidence = np.asarray(confidence, np.float32).reshape(-1)
    keep = (confidence >= config.confidence_threshold) & np.isfinite(points).all(axis=1)
    if not keep.any():
        raise ValueError(
            f"no point reaches confidence {config.confidence_threshold} (of {len(confidence)} points, "
            f"max confidence {float(confidence.max()) if len(confidence) else float('nan'):.3g})"
        )
    points, colors = points[keep], colors[keep]
    if config.voxel_size_m == 0:
        return PointCloud(np.ascontiguousarray(points), np.ascontiguousarray(colors))
    cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points.astype(np.float64)))
    cloud.colors = o3d.utility.Vector3dVector(colors.astype(np.float64) / 255.0)
    cloud = cloud.voxel_down_sample(config.voxel_size_m)  # mean position and colour per voxel
    return PointCloud(
        np.asarray(cloud.points, dtype=np.float32),
        (np.asarray(cloud.colors) * 255.0).round().clip(0, 255).astype(np.uint8),
    )


def write_ply(cloud: PointCloud, uri: str) -> None:
    """Writes a binary PLY (open3d) to a URI: float positions in metres, uint8 colours."""
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud.points.astype(np.float64)))
    pcd.colors = o3d.utility.Vector3dVector(cloud.colors.astype(np.float64) / 255.0)
    with tempfile.TemporaryDirectory() as folder:  # open3d writes local files only
        path = os.path.join(folder, "points.ply")
        if not o3d.io.write_point_cloud(path, pcd, write_ascii=False):
            raise OSError(f"{uri}: open3d could not write the PLY")
        with open(path, "rb") as f:
            storage.write_bytes(uri, f.read())


def encode_glb(cloud: PointCloud) -> bytes:
    """The cloud as binary glTF 2.0: one primitive in mode POINTS with POSITION and COLOR_0.

    The buffer holds CUT3R world coordinates unchanged; the root node's matrix turns OpenCV axes
    into glTF's Y-up axes for display. `asset.extras.coordinate_frame` names the frame.
    """
    m = len(cloud)
    if m == 0:
        raise ValueError("a glTF accessor needs at least one point")
    positions = np.ascontiguousarray(cloud.points, dtype="<f4").tobytes()  # 12 bytes per point
    rgba = np.concatenate([cloud.colors, np.full((m, 1), 255, np.uint8)], axis=1)  # 4-byte aligned elements
    colors = np.ascontiguousarray(rgba).tobytes()
    gltf = {
        "asset": {
            "version": "2.0",
            "generator": "vlm3r_core.geometry.reconstruction",
            "extras": {"coordinate_frame": COORDINATE_FRAME, "node_matrix": "OpenCV to glTF axes, diag(1, -1, -1)"},
        },
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"name": "cut3r_world", "mesh": 0, "matrix": _OPENCV_TO_GLTF}],
        "meshes": [{"name": "points", "primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "mode": _POINTS}]}],
        "buffers": [{"byteLength": len(positions) + len(colors)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(positions), "target": _ARRAY_BUFFER},
            {"buffer": 0, "byteOffset": len(positions), "byteLength": len(colors), "target": _ARRAY_BUFFER},
        ],
        "accessors": [
            {
                "bufferView": 0,
                "componentType": _FLOAT,
                "count": m,
                "type": "VEC3",
                "min": [float(v) for v in cloud.points.min(axis=0)],  # float32 values, exact in JSON
                "max": [float(v) for v in cloud.points.max(axis=0)],
            },
            {"bufferView": 1, "componentType": _UNSIGNED_BYTE, "normalized": True, "count": m, "type": "VEC4"},
        ],
    }
    json_chunk = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    json_chunk += b" " * (-len(json_chunk) % 4)  # chunks are 4-byte aligned: JSON pads with spaces
    bin_chunk = positions + colors
    bin_chunk += b"\x00" * (-len(bin_chunk) % 4)
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    return b"".join(
        [
            struct.pack("<III", _GLB_MAGIC, _GLB_VERSION, total),
            struct.pack("<II", len(json_chunk), _CHUNK_JSON),
            json_chunk,
            struct.pack("<II", len(bin_chunk), _CHUNK_BIN),
            bin_chunk,
        ]
    )


@torch.no_grad()
def reconstruct_video(
    cut3r: Cut3r,
    frames: np.ndarray | torch.Tensor,
    image_size: int,
    timestamps: Sequence[float] | None = None,
    frame_indices: Sequence[int] | None = None,
    config: ReconstructionConfig | None = None,
) -> Reconstruction:
    """Point cloud and camera trajectory of a finished video (offline, one `encode_video` pass).

    Args:
        cut3r: a CUT3R with its pose and point heads (`load_cut3r(uri, enable_point_heads=True)`).
        frames: (T, H, W, 3) uint8 RGB, e.g. `vlm3r_core.video.read_video(uri).frames`.
        image_size: G, the square CUT3R input side (the model config's `cut3r_image_size`); frames
            are resized as the processor resizes them (`resize_frames`).
        timestamps, frame_indices: per frame (default: 0..T-1 for both).
        config: filtering and downsampling (default `ReconstructionConfig()`).

    Returns:
        The cloud of every frame's confident pixels and the T cameras, in CUT3R's world.
    """
    if not (cut3r.config.enable_point_heads and cut3r.config.enable_pose_head):
        raise ValueError("reconstruct_video needs a CUT3R with point and pose heads (enable_point_heads=True)")
    config = config or ReconstructionConfig()
    frames = torch.as_tensor(np.asarray(frames))
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be (T, H, W, 3) uint8 with T >= 1, got {tuple(frames.shape)} {frames.dtype}")
    t = frames.shape[0]
    pixels = resize_frames(frames, image_size)  # (T, 3, G, G) in [-1, 1]
    out = cut3r.encode_video(pixels[None].to(cut3r.device, cut3r.dtype))
    pointmaps = out.pointmaps
    keep = subsample_pixels(image_size * image_size, config.max_points_per_frame)  # (n,)
    points = pointmaps.points_in_world[0].flatten(1, 2)[:, keep]  # (T, n, 3)
    confidence = pointmaps.confidence_in_world[0].flatten(1, 2)[:, keep]  # (T, n)
    colors = pixels_to_colors(pixels).flatten(1, 2)[:, keep]  # (T, n, 3)
    cloud = build_point_cloud(points.cpu().numpy(), colors.numpy(), confidence.cpu().numpy(), config)
    trajectory = CameraTrajectory.from_poses(
        out.poses[0],
        range(t) if timestamps is None else timestamps,
        range(t) if frame_indices is None else frame_indices,
    )
    return Reconstruction(cloud, trajectory)
