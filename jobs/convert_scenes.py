"""Converts the scenes of a source dataset (ScanNet v2, ScanNet++ iPhone, ARKitScenes) into scene folders.

    ray job submit -- python jobs/convert_scenes.py --dataset scannet --source s3://bucket/scannet \\
        --out s3://bucket/vlm3r-data --splits-dir s3://bucket/scannet/Tasks/Benchmark

Also runs as plain ``python jobs/convert_scenes.py ...`` with a local Ray. ``--source`` is the
folder holding the scene folders (ScanNet ``scans/``, ScanNet++ ``data/``, ARKitScenes
``3dod/<fold>/``) or the dataset root above it. Each scene is one Ray task that writes
``<out>/scenes/<dataset>/<scene_id>/video.mp4`` and ``scene.json`` and checks the written video
against it. Splits come from the official lists in ``--splits-dir`` (ScanNet ``scannetv2_*.txt``,
ScanNet++ ``nvs_sem_*.txt``, ARKitScenes ``3dod_train_val_splits.csv``), else from the ARKitScenes
fold folder, else ``--split``. ``<out>/scenes/<dataset>/manifest.jsonl`` lists the converted scenes
(a re-run skips them); ``errors.jsonl`` beside it lists the scenes that failed in the last run,
with the reason. Every flag: ``--help``; exit codes: see ``vlm3r_core/cli.py``.

ARKitScenes: ``--arkitscenes-metadata <3dod>/metadata.csv`` turns each video's frames upright by its
``sky_direction`` (poses, intrinsics and 2D boxes follow); a video missing from that file fails.
Without it the frames stay as recorded.
"""

from __future__ import annotations

import sys

from datagen.readers.convert import ConvertScenesConfig, convert_scene_row, plan_conversion
from jobs.common import RayOptions, connect, run_tasks
from vlm3r_core.cli import parse, run_job
from vlm3r_core.ledger import RunLedger, RunSummary

CONFIGS = (ConvertScenesConfig, RayOptions)


def parse_args(argv: list[str] | None = None) -> ConvertScenesConfig:
    return parse(argv, *CONFIGS)[0]


def convert_scenes(cfg: ConvertScenesConfig, ray_options: RayOptions) -> RunSummary:
    plan = plan_conversion(cfg)
    ledger = RunLedger("convert_scenes", cfg.dataset_dir, "scene_id")
    with ledger:
        todo = ledger.plan(plan.sources)
        for scene_id in todo:
            if scene_id in plan.refused:
                ledger.fail(scene_id, plan.refused[scene_id], source=plan.sources[scene_id].uri)
        calls = [
            (scene_id, (cfg.dataset, plan.sources[scene_id], cfg.out, *plan.todo[scene_id][:1], cfg.frame_stride,
                        plan.todo[scene_id][1]))
            for scene_id in todo
            if scene_id in plan.todo
        ]  # fmt: skip
        dropped = 0
        if calls:
            connect(ray_options)
            for scene_id, row, error in run_tasks(convert_scene_row, calls, cfg.num_cpus_per_scene, f"convert {cfg.dataset}"):
                if error:
                    ledger.fail(scene_id, error, source=plan.sources[scene_id].uri)
                else:
                    ledger.record(row)
                    dropped += row["frames_dropped"]
        return ledger.close(**{"frames dropped": dropped})


def main(argv: list[str] | None = None) -> int:
    return run_job("convert_scenes", argv, CONFIGS, convert_scenes, __doc__.split("\n", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
