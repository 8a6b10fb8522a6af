"""Generates VSI-Bench / VSTI-Bench question-answer data from scenes, in parallel across scenes.

    ray job submit -- python jobs/generate_qa.py --scenes s3://bucket/data --out s3://bucket/data \\
        [--tasks object_counting route_planning ...] [--seed 0] [--per-scene-cap 20 route_planning=5] \\
        [--route-planner auto|builtin|habitat] [--vocabulary vsibench|all] [--scenes-per-shard 256] [--debias]

Also runs as plain ``python jobs/generate_qa.py --scenes ./vlm3r-data --out ./vlm3r-data`` with a
local Ray. ``--scenes`` is any folder holding ``.../<dataset>/<scene_id>/scene.json`` (the data root
written by ``jobs/make_scenes.py``, its ``scenes/`` folder, or one dataset's folder). Each scene is
a Ray Data task that writes its rows to ``<out>/qa/_per_scene/``. Then, over shard groups of
``--scenes-per-shard`` scenes in id order (Ray Data tasks again), the blind baselines are fitted
and scored (``--debias``: rows are pruned until they sit near chance), and each group is written
with its answer letters balanced: under ``<out>/qa/``, ``benchmark/<split>/part-<group>.parquet``,
``conversations/<split>/part-<group>.parquet``, ``manifest.json`` (settings, schema, shards,
counts, blind baselines), ``README.md`` (the dataset card) and ``errors.jsonl`` (scenes that
failed, with the reason). The driver holds only per-group sums: its memory does not grow with the
number of scenes. Re-running resumes: cached scenes are not generated again. The output is the
same for the same seed whatever the number of workers. Route questions are planned
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

import pickle
import sys
from collections.abc import Callable, Iterator, Sequence

import ray

from datagen.dataset import write_outputs
from datagen.qa import (
    GenerateQAConfig,
    QAConfig,
    SceneResult,
    cached_scenes,
    process_scene,
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


def _apply(row: dict, fn: Callable, items: Sequence) -> dict:
    return {"result": pickle.dumps(fn(items[row["item"]]))}


def ray_map(num_cpus: float, concurrency: int | None) -> Callable:
    """``map_fn(fn, items)`` of :func:`datagen.dataset.write_outputs`: one Ray Data task per item,
    results streamed back as they finish."""

    def map_fn(fn: Callable, items: Sequence) -> Iterator:
        if not items:
            return
        rows = (
            ray.data.from_items([{"item": i} for i in range(len(items))], override_num_blocks=len(items))
            .map(_apply, fn_kwargs={"fn": fn, "items": items}, num_cpus=num_cpus, concurrency=concurrency)
            .iter_rows()
        )
        for row in rows:
            yield pickle.loads(row["result"])

    return map_fn


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
        connect(ray_options)
        summary = write_outputs(
            cfg.out,
            cfg.qa,
            scenes,
            sorted(failures, key=lambda f: f.scene_dir),
            cfg.dataset,
            ray_map(cfg.num_cpus_per_scene, cfg.concurrency),
        )
        details = {"questions": summary.num_rows, "shards": summary.num_shards}
        if cfg.dataset.debias:
            details["pruned"] = sum(sum(c.values()) for c in summary.removed.values())
        return ledger.close(**details)


def main(argv: list[str] | None = None) -> int:
    return run_job("generate_qa", argv, CONFIGS, generate_qa, __doc__.split("\n", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
