"""The synthetic scene world: one seed in, one scene (``scene.json`` + ``video.mp4``) out.

:func:`generate_scene` draws a room type, a room and its furniture (:mod:`.layout`), a hand-held
scan through it (:mod:`.trajectory`), renders every frame on the CPU (:mod:`.render`) and fills
the scene contract of :mod:`vlm3r_core.scene`: exact camera-to-world poses, intrinsics and, per
frame, the visible instances measured from the rendered instance mask. Everything comes from the
seed, so the same seed gives the same ``scene.json`` and the same video frames.

:func:`write_synthetic_scene` writes the video, then ``scene.json`` (so a folder holding
``scene.json`` is complete), under ``<root>/scenes/synthetic/<scene_id>/``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datagen.synthetic.layout import Layout, make_layout
from datagen.synthetic.render import RenderedVideo, SceneRenderer, build_scene_mesh, pinhole_intrinsics
from datagen.synthetic.trajectory import Trajectory, TrajectoryError, plan_trajectory
from datagen.visibility import visibility_from_mask
from vlm3r_core import storage
from vlm3r_core.scene import Frame, Scene, VideoInfo, scene_dir, write_scene
from vlm3r_core.video import write_video

DATASET = "synthetic"
VIDEO_FILE = "video.mp4"
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SyntheticConfig:
    """How synthetic scenes are rendered.

    Args:
        width, height: video size in pixels (even, for H.264 yuv420p).
        fps: frames per second of the video.
        duration_s: video length; the video has ``round(fps * duration_s)`` frames.
        hfov_deg: horizontal field of view of the pinhole camera (58 degrees is ScanNet's colour camera).
        crf: H.264 constant rate factor (lower is better quality, bigger files).
        render_threads: Embree threads per ray cast (1: one scene per core in parallel jobs).
        max_layout_tries: layouts drawn (from the same seed) before a room too crowded to walk
            through is reported as an error.
    """

    width: int = 640
    height: int = 480
    fps: float = 10.0
    duration_s: float = 10.0
    hfov_deg: float = 58.0
    crf: int = 23
    render_threads: int = 1
    max_layout_tries: int = 5

    def __post_init__(self):
        for name in ("width", "height"):
            value = getattr(self, name)
            if value < 16 or value % 2:
                raise ValueError(f"{name} must be an even number >= 16 (H.264 yuv420p), got {value}")
        if not 0 < self.fps <= 120 or self.fps != round(self.fps):
            raise ValueError(f"fps must be a whole number in [1, 120] (the mp4 frame rate), got {self.fps}")
        if self.duration_s <= 0:
            raise ValueError(f"duration_s must be positive, got {self.duration_s}")
        if self.num_frames < 2:
            raise ValueError(f"fps * duration_s must give at least 2 frames, got {self.fps} * {self.duration_s}")
        if not 20 <= self.hfov_deg <= 120:
            raise ValueError(f"hfov_deg must be in [20, 120], got {self.hfov_deg}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"crf must be in [0, 51], got {self.crf}")
        if self.render_threads < 0:
            raise ValueError(f"render_threads must be >= 0 (0: all cores), got {self.render_threads}")
        if self.max_layout_tries < 1:
            raise ValueError(f"max_layout_tries must be >= 1, got {self.max_layout_tries}")

    @property
    def num_frames(self) -> int:
        return int(round(self.fps * self.duration_s))


def sample_layout_and_trajectory(seed: int, cfg: SyntheticConfig) -> tuple[Layout, Trajectory, np.random.Generator]:
    """The first layout from ``seed`` whose free floor allows a scan, with that scan.

    Returns the layout, the trajectory and the generator to draw the rest of the scene from.
    """
    reasons = []
    for attempt in range(cfg.max_layout_tries):
        rng = np.random.default_rng([seed, attempt])
        layout = make_layout(rng)
        try:
            return layout, plan_trajectory(layout, cfg.num_frames, cfg.fps, rng), rng
        except TrajectoryError as e:
            reasons.append(f"layout {attempt} ({layout.room_type}, {layout.room.area_m2:.1f} m2): {e}")
    raise TrajectoryError(f"seed {seed}: no walkable layout in {cfg.max_layout_tries} tries; " + "; ".join(reasons))


def generate_scene(scene_id: str, seed: int, cfg: SyntheticConfig, split: str = "train") -> tuple[Scene, RenderedVideo]:
    """Builds one synthetic scene and renders its video.

    Returns:
        The validated :class:`Scene` (video URI ``video.mp4``, relative to the scene folder) and
        its rendered frames: rgb (N, H, W, 3) uint8, depth (N, H, W), instance masks (N, H, W).
    """
    layout, trajectory, rng = sample_layout_and_trajectory(seed, cfg)
    intrinsics = pinhole_intrinsics(cfg.width, cfg.height, cfg.hfov_deg)
    renderer = SceneRenderer(build_scene_mesh(layout, rng), cfg.width, cfg.height, intrinsics, cfg.render_threads)
    video = renderer.render_video(trajectory.cam_to_world)
    frames = tuple(
        Frame(
            index=i,
            timestamp=float(trajectory.timestamps[i]),
            cam_to_world=trajectory.cam_to_world[i],
            intrinsics=intrinsics,
            visible=visibility_from_mask(video.instance[i]),
        )
        for i in range(cfg.num_frames)
    )
    scene = Scene(
        scene_id=scene_id,
        dataset=DATASET,
        split=split,
        room=layout.room,
        objects=tuple(o.to_scene_object() for o in layout.objects),
        video=VideoInfo(uri=VIDEO_FILE, fps=cfg.fps, num_frames=cfg.num_frames, width=cfg.width, height=cfg.height),
        frames=frames,
        extra={"room_type": layout.room_type, "generator": {"name": "vlm3r-synthetic", "version": GENERATOR_VERSION, "seed": seed}},
    )
    return scene, video


def write_synthetic_scene(root: str, scene_id: str, seed: int, cfg: SyntheticConfig, split: str = "train") -> Scene:
    """Generates a scene and writes ``video.mp4`` then ``scene.json`` under ``<root>/scenes/synthetic/<scene_id>/``."""
    scene, video = generate_scene(scene_id, seed, cfg, split)
    folder = scene_dir(root, DATASET, scene_id)
    # Deterministic encoding keeps the video bytes a function of the seed (one encoder thread: a
    # scene uses one core, as the parallel job schedules it).
    write_video(storage.join(folder, VIDEO_FILE), video.rgb, cfg.fps, crf=cfg.crf, deterministic=True)
    write_scene(scene, root)
    return scene
