"""Seconds per synthetic scene and rendered frames per second, against a straightforward renderer.

    taskset -c 0 python benchmarks/bench_synthetic_scenes.py --scenes 3

Target (issue 2): a 10 s, 640x480, 10 fps scene with its metadata in under 10 s on one core.

Measured per scene, end to end (``write_synthetic_scene`` to a temporary folder: layout,
trajectory, rendering, visibility, H.264 encoding, scene.json), with wall and CPU seconds and a
breakdown by stage. The baseline is what a straightforward open3d implementation does: every
triangle (room surfaces included) in one ``RaycastingScene``, then per-pixel shading with boolean
masks per surface kind. It renders the same poses of the same scene in the same run; the script
checks that both renderers give the same instance masks and prints the render speed ratio. The two
renderers alternate pose by pose, so a change in machine load hits both alike.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import open3d as o3d

from datagen.synthetic.render import (
    KIND_FLOOR,
    KIND_OBJECT,
    KIND_WALL,
    SceneMesh,
    SceneRenderer,
    build_scene_mesh,
    pinhole_intrinsics,
)
from datagen.synthetic.world import SyntheticConfig, sample_layout_and_trajectory, write_synthetic_scene
from datagen.visibility import visibility_from_mask
from vlm3r_core.video import write_video


class StraightforwardRenderer:
    """Baseline: the whole mesh in Embree, per-pixel shading with boolean-indexed numpy."""

    def __init__(self, mesh: SceneMesh, width: int, height: int, intrinsics):
        self.mesh = mesh
        self.scene = o3d.t.geometry.RaycastingScene()
        self.scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.triangles))
        u, v = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
        self.dirs_cam = np.stack([(u - intrinsics.cx) / intrinsics.fx, (v - intrinsics.cy) / intrinsics.fy, np.ones_like(u)], -1)

    def render(self, cam_to_world: np.ndarray):
        rot, centre = cam_to_world[:3, :3], cam_to_world[:3, 3]
        dirs = self.dirs_cam @ rot.T  # (H, W, 3)
        rays = np.concatenate([np.broadcast_to(centre, dirs.shape), dirs], axis=-1).astype(np.float32)
        hit = self.scene.cast_rays(o3d.core.Tensor(rays), nthreads=1)
        depth, prim = hit["t_hit"].numpy(), hit["primitive_ids"].numpy()
        m = self.mesh
        head = np.abs(np.sum(m.normal[prim] * dirs, axis=-1)) / np.linalg.norm(dirs, axis=-1)
        rgb = m.colour[prim] * (0.5 + 0.35 * np.clip(m.normal[prim] @ m.light_dir, 0, 1))[..., None]
        obj = m.kind[prim] == KIND_OBJECT
        rgb[obj] *= (0.7 + 0.3 * head[obj])[:, None]
        rgb *= np.clip(1.1 - 0.045 * depth, 0.6, 1.0)[..., None]
        points = centre + depth[..., None] * dirs
        floor = m.kind[prim] == KIND_FLOOR
        tiles = np.floor(points[floor][:, :2] / m.floor_tile_m).sum(axis=1) % 2
        rgb[floor] *= (0.88 + 0.12 * tiles)[:, None]
        wall = m.kind[prim] == KIND_WALL
        rgb[wall] *= np.where(points[wall][:, 2] < 0.1, 0.55, 1.0)[:, None]
        return (np.clip(rgb, 0, 1) * 255).astype(np.uint8), depth, m.instance[prim]


def time_scene(root: str, seed: int, cfg: SyntheticConfig) -> dict[str, float]:
    """End-to-end wall and CPU seconds of one scene, and the time of each stage (CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    write_synthetic_scene(root, f"syn-{seed:06d}", seed, cfg)
    out = {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}
    # The stages again, one by one (same work as inside write_synthetic_scene).
    clock = time.process_time()
    layout, trajectory, rng = sample_layout_and_trajectory(seed, cfg)
    out["layout+trajectory_s"], clock = time.process_time() - clock, time.process_time()
    renderer = SceneRenderer(build_scene_mesh(layout, rng), cfg.width, cfg.height, pinhole_intrinsics(cfg.width, cfg.height, cfg.hfov_deg))
    video = renderer.render_video(trajectory.cam_to_world)
    out["render_s"], clock = time.process_time() - clock, time.process_time()
    for mask in video.instance:
        visibility_from_mask(mask)
    out["visibility_s"], clock = time.process_time() - clock, time.process_time()
    write_video(f"{root}/bench.mp4", video.rgb, cfg.fps, crf=cfg.crf, deterministic=True)
    out["encode_s"] = time.process_time() - clock
    return out


def compare_renderers(seed: int, cfg: SyntheticConfig, frames: int) -> tuple[float, float, float]:
    """CPU seconds per frame of our renderer and of the baseline on the same poses; mask agreement."""
    layout, trajectory, rng = sample_layout_and_trajectory(seed, cfg)
    mesh = build_scene_mesh(layout, rng)
    intrinsics = pinhole_intrinsics(cfg.width, cfg.height, cfg.hfov_deg)
    ours, base = SceneRenderer(mesh, cfg.width, cfg.height, intrinsics), StraightforwardRenderer(mesh, cfg.width, cfg.height, intrinsics)
    poses = trajectory.cam_to_world[np.linspace(0, cfg.num_frames - 1, frames, dtype=int)]
    agree, ours_s, base_s = [], 0.0, 0.0
    for pose in poses:  # the renderers alternate pose by pose, so a change in machine load hits both alike
        clock = time.process_time()
        _, _, a = ours.render(pose)
        ours_s, clock = ours_s + time.process_time() - clock, time.process_time()
        _, _, b = base.render(pose)
        base_s += time.process_time() - clock
        agree.append(np.mean(a == b))
    return ours_s / frames, base_s / frames, float(np.mean(agree))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--scenes", type=int, default=3)
    p.add_argument("--compare-frames", type=int, default=30, help="frames rendered by both renderers")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--fps", type=float, default=10)
    p.add_argument("--duration-s", type=float, default=10)
    a = p.parse_args(argv)
    cfg = SyntheticConfig(width=a.width, height=a.height, fps=a.fps, duration_s=a.duration_s)
    print(f"synthetic scenes: {cfg.width}x{cfg.height}, {cfg.fps:g} fps, {cfg.duration_s:g} s = {cfg.num_frames} frames each")
    rows = []
    with tempfile.TemporaryDirectory() as root:
        write_synthetic_scene(root, "warmup", 1000, SyntheticConfig(width=64, height=48, fps=5, duration_s=1))
        for seed in range(a.scenes):
            row = time_scene(root, seed, cfg)
            rows.append(row)
            print(f"  scene {seed}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
    wall = np.mean([r["wall_s"] for r in rows])
    cpu = np.mean([r["cpu_s"] for r in rows])
    print(f"end to end: {wall:.2f} s/scene wall, {cpu:.2f} s/scene CPU, {cfg.num_frames / cpu:.1f} frames/s (CPU); "
          f"target < 10 s/scene on one core: {'met' if cpu < 10 else 'NOT met'}")
    ours_s, base_s, agree = compare_renderers(0, cfg, a.compare_frames)
    print(f"render only ({a.compare_frames} frames of scene 0): ours {1 / ours_s:.1f} frames/s, "
          f"straightforward open3d baseline {1 / base_s:.1f} frames/s, ratio {base_s / ours_s:.2f}x, "
          f"instance masks agree on {100 * agree:.3f}% of pixels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
