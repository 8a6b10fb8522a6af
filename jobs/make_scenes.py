"""Generates synthetic scenes (procedural rooms with rendered video): the embedded default data.

    ray job submit --working-dir . -- python jobs/make_scenes.py --num-scenes 1000 --out s3://bucket/vlm3r-data --seed 0

Also runs as plain ``python jobs/make_scenes.py --num-scenes 6 --out ./vlm3r-data --seed 0`` with
a local Ray. Each scene is one Ray task (``--num-cpus-per-scene``, fractions allowed) that writes
``<out>/scenes/synthetic/syn-XXXXXX/video.mp4`` and ``scene.json``. Scene ``i`` depends only on
``(--seed, i)``: the same command writes the same scenes, and a larger ``--num-scenes`` adds
scenes without changing the earlier ones. ``<out>/scenes/synthetic/manifest.jsonl`` lists the
finished scenes (a re-run skips them); ``errors.jsonl`` beside it lists the scenes that failed in
the last run, with the reason. Exits 1 when every scene of the run
failed (as every job does), else 0.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from datagen.synthetic.batch import (
    ERRORS_FILE,
    MANIFEST_FILE,
    SceneRecord,
    SceneTask,
    dataset_dir,
    plan_scenes,
    read_manifest,
    run_scene_task,
    write_errors,
    write_manifest,
)
from datagen.synthetic.world import SyntheticConfig
from jobs.common import init_ray, run_tasks

MANIFEST_FLUSH_S = 10.0  # rewrite the manifest at most this often while scenes complete


@dataclass(frozen=True)
class MakeScenesConfig:
    num_scenes: int
    out: str
    seed: int = 0
    val_fraction: float = 0.1
    num_cpus_per_scene: float = 1.0
    address: str | None = None
    scene: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        if self.num_scenes < 1:
            raise ValueError(f"num_scenes must be >= 1, got {self.num_scenes}")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1], got {self.val_fraction}")
        if not self.num_cpus_per_scene > 0:
            raise ValueError(f"num_cpus_per_scene must be > 0, got {self.num_cpus_per_scene}")


def parse_args(argv: list[str] | None = None) -> MakeScenesConfig:
    d = SyntheticConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--num-scenes", type=int, required=True)
    p.add_argument("--out", required=True, help="output root URI (writes <out>/scenes/synthetic/...)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of scenes in the val split (every k-th scene, stable as the batch grows)")
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--fps", type=float, default=d.fps)
    p.add_argument("--duration-s", type=float, default=d.duration_s)
    p.add_argument("--num-cpus-per-scene", type=float, default=1.0)
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a local Ray)")
    a = p.parse_args(argv)
    scene = SyntheticConfig(width=a.width, height=a.height, fps=a.fps, duration_s=a.duration_s)
    return MakeScenesConfig(a.num_scenes, a.out, a.seed, a.val_fraction, a.num_cpus_per_scene, a.address, scene)


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    manifest = read_manifest(cfg.out)
    tasks = plan_scenes(cfg.num_scenes, cfg.seed, cfg.val_fraction)
    todo = [t for t in tasks if t.scene_id not in manifest]
    errors: list[dict] = []
    written = {"train": 0, "val": 0}
    flushed = time.monotonic()
    for task, result in _generate_all(cfg, todo):
        if isinstance(result, str):
            errors.append({"scene_id": task.scene_id, "seed": task.seed, "error": result})
            continue
        manifest[task.scene_id] = result
        written[task.split] += 1
        if time.monotonic() - flushed > MANIFEST_FLUSH_S:
            write_manifest(cfg.out, manifest)
            flushed = time.monotonic()
    write_manifest(cfg.out, manifest)
    write_errors(cfg.out, errors)
    print(
        f"make_scenes: {sum(written.values())} scenes written ({written['train']} train, {written['val']} val), "
        f"{len(tasks) - len(todo)} already done, {len(errors)} failed -> {dataset_dir(cfg.out)} "
        f"({MANIFEST_FILE}: {len(manifest)} scenes, {ERRORS_FILE}: {len(errors)})"
    )
    return 1 if todo and len(errors) == len(todo) else 0  # exit 1 only when every scene failed


def _generate_all(cfg: MakeScenesConfig, todo: list[SceneTask]) -> Iterator[tuple[SceneTask, SceneRecord | str]]:
    """One Ray task per scene; yields (task, SceneRecord or error reason) as the tasks finish."""
    if not todo:
        return
    init_ray(cfg.address)
    calls = [(task, (cfg.out, task, cfg.scene)) for task in todo]
    for task, record, error in run_tasks(run_scene_task, calls, cfg.num_cpus_per_scene, "synthetic scenes"):
        yield task, error or record


if __name__ == "__main__":
    sys.exit(main())
