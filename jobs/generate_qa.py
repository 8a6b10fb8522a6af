"""Generates VSI-Bench / VSTI-Bench question-answer data from scenes, in parallel across scenes.

    ray job submit -- python jobs/generate_qa.py --scenes s3://bucket/data --out s3://bucket/data \\
        [--tasks object_counting route_planning ...] [--seed 0] [--per-scene-cap 20 route_planning=5] \\
        [--route-planner auto|builtin|habitat] [--vocabulary vsibench|all]

Also runs as plain ``python jobs/generate_qa.py --scenes ./vlm3r-data --out ./vlm3r-data`` with a
local Ray. ``--scenes`` is any folder holding ``.../<dataset>/<scene_id>/scene.json`` (the data root
written by ``jobs/make_scenes.py``, its ``scenes/`` folder, or one dataset's folder). Each scene is
a Ray Data task that writes its rows to ``<out>/qa/_per_scene/``; the driver then balances the
answer letters over the whole run and writes, under ``<out>/qa/``: ``benchmark/{split}.parquet``
and ``.jsonl``, ``conversations/{split}.jsonl``, ``manifest.json`` and ``errors.jsonl`` (scenes
that failed, with the reason). Re-running resumes: cached scenes are not generated again. The
output is the same for the same seed whatever the number of workers. Route questions are planned
with habitat-sim's navmesh when ``habitat_sim`` imports (``--route-planner auto``, the default),
else with the built-in planner; ``--route-planner habitat`` stops at once where it does not import.
Questions name objects by the benchmark's vocabulary of each dataset (``--vocabulary vsibench``, the
default: ScanNet's "trash can" and "recycling bin" are asked about as "trash bin", "office chair" or
"kitchen cabinets" never; synthetic scenes name every object); ``--vocabulary all`` names every raw
label. Unnamed objects still block routes and hide what is behind them. Each scene's video is
checked against its ``scene.json`` (frame count and size) before any question is asked about it;
a mismatch is a recorded failure. Every flag: ``--help``; exit codes: see ``vlm3r_core/cli.py``.
"""

from __future__ import annotations

import sys

import ray

from datagen.qa import (
    GenerateQAConfig,
    QAConfig,
    SceneResult,
    cached_scenes,
    process_scene,
    write_outputs,
)
from jobs.common import RayOptions, connect
from vlm3r_core import storage
from vlm3r_core.cli import parse, run_job
from vlm3r_core.ledger import RunLedger, RunSummary
from vlm3r_core.scene import SceneRef, list_scenes

CONFIGS = (GenerateQAConfig, RayOptions)


def parse_args(argv: list[str] | None = None) -> GenerateQAConfig:
    return parse(argv, *CONFIGS)[0]


def _process_row(row: dict, out: str, config: QAConfig) -> dict:
    """Ray Data map: one scene folder -> its cached rows (or the failure reason)."""
    result = process_scene(SceneRef(row["scene_dir"], row["version"]), out, config)
    return {"scene_dir": result.scene_dir, "num_rows": result.num_rows, "error": result.error or ""}


def generate_qa(cfg: GenerateQAConfig, ray_options: RayOptions) -> RunSummary:
    scenes = list_scenes(cfg.scenes)
    if not scenes:
        raise FileNotFoundError(f"no scene.json under {cfg.scenes}")
    qa_dir = storage.join(cfg.out, "qa")
    ledger = RunLedger(
        "generate_qa", qa_dir, "scene", done=cached_scenes(cfg.out, cfg.qa, scenes), manifest_file="scenes.jsonl"
    )
    with ledger:
        by_dir = {s.dir: s for s in scenes}
        todo = ledger.plan(by_dir)
        failures: list[SceneResult] = []
        if todo:
            connect(ray_options)
            items = [{"scene_dir": d, "version": by_dir[d].version} for d in todo]
            results = (
                ray.data.from_items(items, override_num_blocks=len(items))
                .map(_process_row, fn_kwargs={"out": cfg.out, "config": cfg.qa}, num_cpus=cfg.num_cpus_per_scene,
                     concurrency=cfg.concurrency)  # fmt: skip
                .iter_rows()
            )
            for r in results:
                if r["error"]:
                    ledger.fail(r["scene_dir"], r["error"])
                    failures.append(SceneResult(r["scene_dir"], 0, r["error"]))
                else:
                    ledger.record({"scene": r["scene_dir"], "version": by_dir[r["scene_dir"]].version, "rows": r["num_rows"]})
        summary = write_outputs(cfg.out, cfg.qa, scenes, sorted(failures, key=lambda f: f.scene_dir))
        return ledger.close(questions=summary.num_rows)


def main(argv: list[str] | None = None) -> int:
    return run_job("generate_qa", argv, CONFIGS, generate_qa, __doc__.split("\n", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
