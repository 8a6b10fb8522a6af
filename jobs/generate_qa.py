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
label. Unnamed objects still block routes and hide what is behind them.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import ray

from datagen.qa import (
    QAConfig,
    SceneRef,
    SceneResult,
    find_scenes,
    process_scene,
    scene_cache_uri,
    write_outputs,
)
from datagen.routing import ROUTE_PLANNERS
from datagen.tasks import TASKS
from datagen.vocabulary import VOCABULARIES
from jobs.common import init_ray
from vlm3r_core import storage


@dataclass(frozen=True)
class GenerateQAConfig:
    """Where scenes come from and go, what to generate (``qa``), and how Ray runs it."""

    scenes: str
    out: str
    qa: QAConfig
    num_cpus_per_scene: float = 0.5
    concurrency: int | None = None
    address: str | None = None

    def __post_init__(self):
        if not self.num_cpus_per_scene > 0:
            raise ValueError(f"num_cpus_per_scene must be > 0, got {self.num_cpus_per_scene}")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")


def _parse_caps(values: list[str]) -> tuple[int | None, dict[str, int]]:
    """``["20", "route_planning=5"]`` -> (20, {"route_planning": 5})."""
    default, caps = None, {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            cap = int(number)
        except ValueError:
            raise ValueError(f"--per-scene-cap {value!r}: expected N or TASK=N") from None
        if name:
            caps[name] = cap
        else:
            default = cap
    return default, caps


def parse_args(argv: list[str] | None = None) -> GenerateQAConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--scenes", required=True, help="folder URI holding <dataset>/<scene_id>/scene.json")
    p.add_argument("--out", required=True, help="output root URI (writes <out>/qa/...)")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=list(TASKS),
        choices=list(TASKS),
        metavar="TASK",
        help=f"of {list(TASKS)}",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--per-scene-cap",
        nargs="+",
        default=[],
        metavar="N|TASK=N",
        help="questions per scene and question type: N for every task, TASK=N for one (default: each task's own)",
    )
    p.add_argument("--num-frames", type=int, default=32, help="frames sampled per video ('frame k of N')")
    p.add_argument(
        "--route-planner",
        choices=ROUTE_PLANNERS,
        default="auto",
        help="route questions: habitat-sim's navmesh (habitat), the built-in planner (builtin), "
        "or habitat when habitat_sim imports (auto)",
    )
    p.add_argument(
        "--vocabulary",
        choices=VOCABULARIES,
        default="vsibench",
        help="object names questions use: the benchmark's vocabulary per dataset, with its merges "
        "(vsibench), or every raw label (all)",
    )
    p.add_argument("--num-cpus-per-scene", type=float, default=0.5)
    p.add_argument(
        "--concurrency", type=int, help="at most this many scenes at once (default: as Ray schedules)"
    )
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a local Ray)")
    args = p.parse_args(argv)
    default_cap, caps = _parse_caps(args.per_scene_cap)
    qa = QAConfig(
        tasks=tuple(args.tasks),
        seed=args.seed,
        caps=caps,
        default_cap=default_cap,
        num_frames=args.num_frames,
        route_planner=args.route_planner,
        vocabulary=args.vocabulary,
    )
    return GenerateQAConfig(
        args.scenes, args.out, qa, args.num_cpus_per_scene, args.concurrency, args.address
    )


def _process_row(row: dict, out: str, config: QAConfig) -> dict:
    """Ray Data map: one scene folder -> its cached rows (or the failure reason)."""
    result = process_scene(SceneRef(row["scene_dir"], row["version"]), out, config)
    return {"scene_dir": result.scene_dir, "num_rows": result.num_rows, "error": result.error or ""}


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    scenes = find_scenes(cfg.scenes)
    if not scenes:
        print(f"no scene.json under {cfg.scenes}", file=sys.stderr)
        return 1
    todo = [s for s in scenes if not storage.exists(scene_cache_uri(cfg.out, cfg.qa, s))]
    results: list[SceneResult] = []
    if todo:
        init_ray(cfg.address)
        rows = (
            ray.data.from_items(
                [{"scene_dir": s.dir, "version": s.version} for s in todo], override_num_blocks=len(todo)
            )
            .map(
                _process_row,
                fn_kwargs={"out": cfg.out, "config": cfg.qa},
                num_cpus=cfg.num_cpus_per_scene,
                concurrency=cfg.concurrency,
            )
            .take_all()
        )
        results = [SceneResult(r["scene_dir"], r["num_rows"], r["error"] or None) for r in rows]
    failures = sorted((r for r in results if r.error), key=lambda r: r.scene_dir)
    summary = write_outputs(cfg.out, cfg.qa, scenes, failures)
    print(
        f"generate_qa: {summary.num_rows} questions from {summary.num_scenes - summary.num_failed} scenes "
        f"({len(scenes) - len(todo)} cached, {summary.num_failed} failed) -> {storage.join(cfg.out, 'qa')}"
    )
    return 1 if summary.num_failed == summary.num_scenes else 0


if __name__ == "__main__":
    sys.exit(main())
