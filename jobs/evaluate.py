"""Distributed VSI-Bench / VSTI-Bench evaluation: batch inference on a Ray Data actor pool.

    ray job submit -- python jobs/evaluate.py --model s3://bucket/runs/demo/model \\
        --benchmark s3://bucket/qa/benchmark/val --tokens s3://bucket/tokens/tiny \\
        --out s3://bucket/eval/demo [--num-actors 4] [--gpu]

Also runs as plain ``python jobs/evaluate.py ...`` with a local Ray. ``--model`` is a
``save_pretrained`` folder/URI from ``jobs/train.py`` or the converter, a preset name (``tiny`` =
the untrained model), or any OpenAI-compatible endpoint::

    python jobs/evaluate.py --model openai:http://127.0.0.1:8000/v1#vlm3r --endpoint-input video \
        --endpoint-prompt question --benchmark ... --out ...     # our own Serve app
    python jobs/evaluate.py --model openai:http://gpu-host:8000/v1#Qwen/Qwen2.5-VL-7B-Instruct ...  # vLLM

An endpoint is asked from the driver (threads, ``--endpoint-concurrency`` requests in flight,
retries with backoff; no Ray work). For our model, features come from precomputed token shards
(``--tokens``) or, without it, from the raw videos, which the actors decode and encode themselves;
``--dtype`` runs it in another dtype than its config's; ``--blind`` answers without the video;
``--online`` streams each video's sampled frames one by one through the live-session path (a
``LiveSession``, as a Serve session does) and asks after the last one (the offline answers, exactly),
and ``--online-fractions 0.25 0.5 0.75`` also asks when only that much of the video has played
(``online_curve`` in ``summary.json``, ``plots/online_curve.png``). The same prompt builder, frame
sampling and generation path as training and serving are used. Writes ``predictions.jsonl``, ``summary.json``,
``summary.md`` (with VSI-Bench's chance levels, and the VSI-Bench-Debiased subset when the rows
say which were pruned or ``--pruned-ids`` is given), ``plots/``, and the run ledger
``answers.jsonl`` / ``errors.jsonl`` (questions whose video or inference failed, with the reason)
under ``--out``. An interrupted run resumes: a re-run with the same ``--out`` and ``--model`` answers
only the rest (vlm3r_core/evaluation.py). When ``--model`` is a model folder, its results are added
to the folder's model card (``README.md``). Every flag: ``--help``; exit codes: see
``vlm3r_core/cli.py``.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict

import ray

from jobs.common import RayOptions, connect
from vlm3r_core.cli import parse, run_job
from vlm3r_core.endpoint import EndpointAnswerer
from vlm3r_core.evaluation import BenchmarkRow, EvalConfig, run_evaluation
from vlm3r_core.inference import AnswerQuestions
from vlm3r_core.ledger import RunSummary
from vlm3r_core.model_card import record_evaluation

CONFIGS = (EvalConfig, RayOptions)


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    return parse(argv, *CONFIGS)[0]


def answer_on_ray(cfg: EvalConfig, ray_options: RayOptions, rows: Sequence[BenchmarkRow]) -> Iterator[dict]:
    """Answers ``rows`` on an actor pool (one GPU per actor on a GPU cluster), yielding as they come."""
    gpu = connect(ray_options)
    outputs = ray.data.from_items([asdict(r) for r in rows]).map_batches(
        AnswerQuestions,
        fn_constructor_kwargs={"model": cfg.model, "tokens": cfg.tokens, "device": "cuda" if gpu else "cpu",
                               "max_new_tokens": cfg.max_new_tokens, "dtype": cfg.dtype, "blind": cfg.blind,
                               "online": cfg.online, "online_fractions": cfg.online_fractions},  # fmt: skip
        batch_size=cfg.batch_size,
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        **({"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": 0.5}),
    )
    yield from outputs.iter_rows()


def evaluate(cfg: EvalConfig, ray_options: RayOptions) -> RunSummary:
    if cfg.is_endpoint:  # asked from the driver: HTTP requests need no actors
        answer = EndpointAnswerer(cfg.model, cfg.endpoint, cfg.max_new_tokens, cfg.blind)
    else:
        answer = functools.partial(answer_on_ray, cfg, ray_options)
    summary, _ = run_evaluation(cfg, answer)
    try:
        if record_evaluation(cfg.model, cfg.out):
            print(f"[evaluate] results added to the model card {cfg.model}/README.md", flush=True)
    except OSError as e:  # a read-only model folder still gets its evaluation
        print(f"[evaluate] warning: could not update the model card of {cfg.model}: {e}", file=sys.stderr, flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    return run_job("evaluate", argv, CONFIGS, evaluate, __doc__.split("\n", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
