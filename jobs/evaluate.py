"""Distributed VSI-Bench / VSTI-Bench evaluation: batch inference on a Ray Data actor pool.

    ray job submit -- python jobs/evaluate.py --model s3://bucket/runs/demo/model \\
        --benchmark s3://bucket/qa/benchmark/val --tokens s3://bucket/tokens/tiny \\
        --out s3://bucket/eval/demo [--num-actors 4] [--gpu]

Also runs as plain ``python jobs/evaluate.py ...`` with a local Ray. ``--model`` is a
``save_pretrained`` folder/URI from ``jobs/train.py`` or a preset name (``tiny`` = the untrained
model). Features come from precomputed token shards (``--tokens``) or, without it, from the raw
videos, which the actors decode and encode themselves. The same prompt builder, frame sampling and
generation path as training and serving are used. Writes ``predictions.jsonl``, ``summary.json``,
``summary.md``, ``plots/``, and the run ledger ``answers.jsonl`` / ``errors.jsonl`` (questions whose
video or inference failed, with the reason) under ``--out``. An interrupted run resumes: a re-run
with the same ``--out`` and ``--model`` answers only the rest (vlm3r_core/evaluation.py). Every
flag: ``--help``; exit codes: see ``vlm3r_core/cli.py``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict

import ray

from jobs.common import RayOptions, connect
from vlm3r_core.cli import parse, run_job
from vlm3r_core.evaluation import BenchmarkRow, EvalConfig, run_evaluation
from vlm3r_core.inference import AnswerQuestions
from vlm3r_core.ledger import RunSummary

CONFIGS = (EvalConfig, RayOptions)


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    return parse(argv, *CONFIGS)[0]


def answer_on_ray(cfg: EvalConfig, ray_options: RayOptions, rows: Sequence[BenchmarkRow]) -> Iterator[dict]:
    """Answers ``rows`` on an actor pool (one GPU per actor on a GPU cluster), yielding as they come."""
    gpu = connect(ray_options)
    outputs = ray.data.from_items([asdict(r) for r in rows]).map_batches(
        AnswerQuestions,
        fn_constructor_kwargs={"model": cfg.model, "tokens": cfg.tokens, "device": "cuda" if gpu else "cpu",
                               "max_new_tokens": cfg.max_new_tokens},  # fmt: skip
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        **({"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": 0.5}),
    )
    yield from outputs.iter_rows()


def evaluate(cfg: EvalConfig, ray_options: RayOptions) -> RunSummary:
    summary, _ = run_evaluation(cfg, lambda rows: answer_on_ray(cfg, ray_options, rows))
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_job("evaluate", argv, CONFIGS, evaluate, __doc__.split("\n", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
