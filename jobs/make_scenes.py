"""Generates synthetic scenes (procedural rooms with rendered video): the embedded default data.

    ray job submit --working-dir . -- python jobs/make_scenes.py --num-scenes 1000 --out s3://bucket/vlm3r-data --seed 0

Also runs as plain ``python jobs/make_scenes.py --num-scenes 6 --out ./vlm3r-data --seed 0`` with
a local Ray. Each scene is one Ray task (``--num-cpus-per-scene``, fractions allowed) that writes
``<out>/scenes/synthetic/syn-XXXXXX/video.mp4`` and ``scene.json`` and checks the written video
against it. Scene ``i`` depends only on ``(--seed, i)``: the same command writes the same scenes,
and a larger ``--num-scenes`` adds scenes without changing the earlier ones.
``<out>/scenes/synthetic/manifest.jsonl`` lists the finished scenes (a re-run skips them);
``errors.jsonl`` beside it lists the scenes that failed in the last run, with the reason. Every
flag: ``--help``; exit codes: see ``vlm3r_core/cli.py``.
"""

from __future__ import annotations

import sys
from dataclasses import asdict

from datagen.synthetic.batch import MakeScenesConfig, dataset_dir, plan_scenes, run_scene_task
from jobs.common import RayOptions, connect, run_tasks
from vlm3r_core.cli import parse, run_job
from vlm3r_core.ledger import RunLedger, RunSummary

CONFIGS = (MakeScenesConfig, RayOptions)


def parse_args(argv: list[str] | None = None) -> MakeScenesConfig:
    return parse(argv, *CONFIGS)[0]


def make_scenes(cfg: MakeScenesConfig, ray_options: RayOptions) -> RunSummary:
    ledger = RunLedger("make_scenes", dataset_dir(cfg.out), "scene_id")
    with ledger:
        tasks = {t.scene_id: t for t in plan_scenes(cfg.num_scenes, cfg.seed, cfg.val_fraction)}
        todo = ledger.plan(tasks)
        splits = {"train": 0, "val": 0}
        if todo:
            connect(ray_options)
            calls = [(tasks[k], (cfg.out, tasks[k], cfg.scene)) for k in todo]
            for task, record, error in run_tasks(run_scene_task, calls, cfg.num_cpus_per_scene, "synthetic scenes"):
                if error:
                    ledger.fail(task.scene_id, error, seed=task.seed)
                else:
                    ledger.record(asdict(record))
                    splits[task.split] += 1
        return ledger.close(train=splits["train"], val=splits["val"])


def main(argv: list[str] | None = None) -> int:
    return run_job("make_scenes", argv, CONFIGS, make_scenes, __doc__.split("\n", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
