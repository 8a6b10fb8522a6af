"""Distributed VSI-Bench / VSTI-Bench evaluation: batch inference on a Ray Data actor pool.

    ray job submit -- python jobs/evaluate.py --model s3://bucket/runs/demo/model \\
        --benchmark s3://bucket/qa/benchmark/val.parquet --tokens s3://bucket/tokens/tiny \\
        --out s3://bucket/eval/demo [--num-actors 4] [--gpu]

Also runs as plain ``python jobs/evaluate.py ...`` with a local Ray. ``--model`` is a
``save_pretrained`` folder/URI from ``jobs/train.py`` or a preset name (``tiny`` = the untrained
model). Features come from precomputed token shards (``--tokens``) or, without it, from the raw
videos, which the actors decode and encode themselves. The same prompt builder and frame sampling
as training are used. Writes ``predictions.jsonl``, ``summary.json``, ``summary.md``, ``plots/``
and ``errors.jsonl`` (questions whose video or inference failed, with the reason) under ``--out``.
An interrupted run resumes: answers are saved to ``_answers.partial.jsonl`` as they arrive, and a
re-run with the same ``--out`` and ``--model`` answers only the rest (the file goes when the run
completes). Exits 1 only when every question failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass

import ray

from jobs.common import init_ray
from vlm3r_core import storage
from vlm3r_core.evaluation import read_benchmark, read_summary, score_predictions, write_report
from vlm3r_core.inference import AnswerQuestions
from vlm3r_core.metrics import summary_markdown

PARTIAL_FILE = "_answers.partial.jsonl"  # answers so far, while a run is in progress
PARTIAL_FLUSH_S = 30.0


@dataclass(frozen=True)
class EvalConfig:
    model: str
    benchmark: str
    out: str
    tokens: str | None = None
    videos_root: str | None = None
    split: str | None = None
    num_actors: int = 1
    gpu: bool = False
    batch_size: int = 8
    max_new_tokens: int = 16
    limit: int | None = None
    baseline: str | None = None
    title: str = ""
    address: str | None = None

    def __post_init__(self):
        if self.num_actors < 1 or self.batch_size < 1 or self.max_new_tokens < 1:
            raise ValueError("num_actors, batch_size and max_new_tokens must be >= 1")


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--model", required=True, help="save_pretrained folder/URI, or a preset name (tiny)")
    p.add_argument("--benchmark", required=True, help="benchmark rows: parquet file/folder, JSON or JSONL")
    p.add_argument("--out", required=True, help="output folder URI")
    p.add_argument("--tokens", help="token shards URI (precomputed features); default: encode raw videos")
    p.add_argument("--videos-root", help="where {dataset}/{scene_name}.mp4 lives for official files")
    p.add_argument("--split", help="keep only rows of this split")
    p.add_argument("--num-actors", type=int, default=1)
    p.add_argument("--gpu", action="store_true", help="one GPU per actor")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--limit", type=int, help="evaluate only the first N questions")
    p.add_argument("--baseline", help="summary.json of another run, shown beside this one")
    p.add_argument("--title", default="")
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a local Ray)")
    return EvalConfig(**{k.replace("-", "_"): v for k, v in vars(p.parse_args(argv)).items()})


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    rows = read_benchmark(cfg.benchmark, cfg.videos_root, cfg.split)[: cfg.limit]
    if not rows:
        print(f"no benchmark rows in {cfg.benchmark}", file=sys.stderr)
        return 1
    # Answers of an interrupted run into the same --out with the same model are kept, not recomputed.
    partial = storage.join(cfg.out, PARTIAL_FILE)
    answers = {}
    if storage.exists(partial):
        wanted = {r.id for r in rows}
        answers = {
            a["id"]: a
            for a in storage.read_jsonl(partial)
            if a["model"] == cfg.model and a["error"] is None and a["id"] in wanted
        }
    todo = [r for r in rows if r.id not in answers]
    if answers:
        print(f"resuming: {len(answers)} questions answered by an interrupted run, {len(todo)} to go")
    if todo:
        init_ray(cfg.address)
        _answer_all(cfg, todo, answers, partial)
    answered = {i: a["prediction"] for i, a in answers.items() if a["error"] is None}
    errors = [{"id": i, "video_id": a["video_id"], "reason": a["error"]} for i, a in answers.items() if a["error"]]
    records = score_predictions(rows, answered)
    baseline = read_summary(cfg.baseline) if cfg.baseline else None
    summaries = write_report(cfg.out, records, cfg.title or cfg.model, baseline)
    storage.write_jsonl(storage.join(cfg.out, "errors.jsonl"), errors)
    storage.remove(partial)
    print(summary_markdown(summaries, cfg.title or cfg.model, baseline))
    overall = ", ".join(f"{k} {s.overall_official:.1f} (lenient {s.overall_lenient:.1f})" for k, s in summaries.items())
    print(f"evaluated {len(rows)} questions ({len(errors)} failed) -> {cfg.out}: {overall}")
    return 1 if errors and len(errors) == len(rows) else 0  # exit 1 only when every question failed


def _answer_all(cfg: EvalConfig, rows: list, answers: dict[str, dict], partial: str) -> None:
    """Answers ``rows`` on an actor pool, adding to ``answers`` and saving them to ``partial`` as they come."""
    resources = {"num_gpus": 1, "num_cpus": 1} if cfg.gpu else {"num_cpus": 0.5}
    outputs = (
        ray.data.from_items([asdict(r) for r in rows])
        .map_batches(
            AnswerQuestions,
            fn_constructor_kwargs={
                "model": cfg.model,
                "tokens": cfg.tokens,
                "device": "cuda" if cfg.gpu else "cpu",
                "max_new_tokens": cfg.max_new_tokens,
            },
            batch_size=cfg.batch_size,
            compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
            **resources,
        )
    )
    flushed = time.monotonic()
    for o in outputs.iter_rows():
        answers[o["id"]] = {"id": o["id"], "video_id": o["video_id"], "prediction": o["prediction"], "error": o["error"], "model": cfg.model}
        if time.monotonic() - flushed > PARTIAL_FLUSH_S:
            storage.write_jsonl(partial, answers.values())
            flushed = time.monotonic()


if __name__ == "__main__":
    sys.exit(main())
