"""Tune VLM-3R (LoRA + fusion block + projector) from precomputed token shards: Ray Train + DeepSpeed.

On a cluster::

    ray job submit --working-dir . -- python jobs/train.py \\
        --qa s3://bucket/data/qa/conversations/train --tokens s3://bucket/data/tokens/<encoder> \\
        --out s3://bucket/runs/vlm3r-lora --preset vlm3r-7b --num-workers 8 --gpu --zero-stage 2 \\
        --max-steps 8000 --grad-accum-steps 16 --lr 2e-5

Locally, with no cluster (a local Ray, CPU workers, fp32, gloo)::

    python jobs/train.py --qa ./vlm3r-data/qa/conversations/train \\
        --tokens ./vlm3r-data/tokens/tiny-112px-32f-vf --out ./vlm3r-data/runs/tiny --preset tiny \\
        --num-workers 2 --cpus-per-worker 0.5 --max-steps 200 --lr 1e-3

The driver plans the data (``vlm3r_core.train_data``: the join, refused when the shards or the
questions were made for another preset or frame count, and each worker's share of the videos);
each worker streams its own videos' token rows in an order fixed by the seed, so a checkpoint's
data position resumes exactly. Writes checkpoints to ``<out>/checkpoints/<run-name>/`` (re-running
with the same ``--out`` and ``--run-name`` resumes; a finished run says so and exits), the trained
model to ``<out>/model`` with its model card (``README.md``: data, steps, batch, hardware, wall
time; ``vlm3r_core/model_card.py``), ``<out>/summary.json`` when done and conversations without
tokens to ``<out>/skipped.jsonl``. Every ``TrainConfig`` field is a flag (``--max-steps``, ``--lr``, ...).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time

import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from jobs.common import RayOptions, connect
from vlm3r_core import storage
from vlm3r_core.cli import parse, run_job
from vlm3r_core.model_card import training_provenance, write_provenance
from vlm3r_core.train_data import MicroBatchStream, TrainCollator, TrainingData, plan_training_join
from vlm3r_core.training import (
    FAIL_AT_STEP_ENV,
    MetricsWindow,
    TrainConfig,
    TrainState,
    build_engine,
    build_model_for_training,
    check_fault_injection,
    export_model,
    finished_run,
    load_checkpoint,
    lr_at,
    rank_and_world,
    save_checkpoint,
    train_step,
    training_model_config,
    write_run_summary,
)

CONFIGS = (TrainConfig, RayOptions)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    return resolve_paths(parse(argv, *CONFIGS)[0])


def resolve_paths(cfg: TrainConfig) -> TrainConfig:
    """Local paths made absolute on the driver: Ray Train workers run in their own directory."""
    return dataclasses.replace(cfg, qa_uri=storage.absolute(cfg.qa_uri), tokens_uri=storage.absolute(cfg.tokens_uri),
                               out_uri=storage.absolute(cfg.out_uri))  # fmt: skip


def plan_data(cfg: TrainConfig) -> TrainingData:
    """The join of conversations and token shards, split over the workers; records the skipped ones."""
    plan = plan_training_join(cfg.qa_uri, cfg.tokens_uri, training_model_config(cfg))
    if plan.skipped:
        storage.write_jsonl(cfg.skipped_uri, plan.skipped)
        print(f"[train] {len(plan.skipped)} conversations have no tokens, skipped: {cfg.skipped_uri}", flush=True)
    else:
        storage.remove(cfg.skipped_uri)
    return TrainingData.split(plan, cfg.num_workers, cfg.micro_batch_size)


def train_loop_per_worker(config: dict) -> None:
    cfg, data = TrainConfig(**config["train"]), ray.get(config["data"])
    model, processor = build_model_for_training(cfg)
    engine = build_engine(cfg, model)
    state, metrics = TrainState(), None
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(engine, directory)
    rank, world_size = rank_and_world()
    stream = MicroBatchStream(data, rank, TrainCollator(processor, cfg.dtype), cfg.grad_accum_steps, cfg.seed,
                              cfg.shuffle_buffer, position=(state.epoch, state.batch_in_epoch))
    window = MetricsWindow(cfg, engine.device)
    while state.step < cfg.max_steps:
        check_fault_injection(state)
        result = train_step(engine, stream.next_step(), lr_at(cfg, state.step))
        state.advance(result, stream.position, world_size)
        window.add(result, state)
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.max_steps:
            with tempfile.TemporaryDirectory() as directory:
                save_checkpoint(engine, state, directory)
                metrics = window.metrics(state)
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(directory))
    stream.close()
    export_model(engine, processor, cfg.model_uri)
    write_run_summary(cfg, state, metrics)


def hardware(cfg: TrainConfig) -> str:
    """What the workers ran on, for the model card: ``8 x GPU (H100)`` or ``2 x 0.5 CPU``."""
    if not cfg.use_gpu:
        return f"{cfg.num_workers} x {cfg.cpus_per_worker:g} CPU"
    kinds = sorted({k.split(":", 1)[1] for k in ray.cluster_resources() if k.startswith("accelerator_type:")})
    return f"{cfg.num_workers} x GPU ({', '.join(kinds) or 'type not reported'})"


def record_model(cfg: TrainConfig, metrics: dict | None, wall_time_s: float) -> None:
    """Writes the exported model's provenance and card (a failure here only warns: the model is saved)."""
    if not storage.exists(storage.join(cfg.model_uri, "config.json")):
        return
    try:
        provenance = training_provenance(
            dataclasses.asdict(cfg), model=training_model_config(cfg), steps=(metrics or {}).get("step"), loss=(metrics or {}).get("loss"),
            hardware=hardware(cfg), wall_time_s=wall_time_s,
        )  # fmt: skip
        write_provenance(cfg.model_uri, provenance)
    except (OSError, ValueError) as e:
        print(f"[train] warning: no model card for {cfg.model_uri}: {e}", file=sys.stderr)


def train(cfg: TrainConfig, ray_options: RayOptions) -> int:
    started = time.monotonic()
    cfg = resolve_paths(cfg)
    if (done := finished_run(cfg)) is not None:
        print(f"[train] {cfg.run_name}: already finished at step {done['step']} (max_steps={cfg.max_steps}), "
              f"nothing to do; model -> {cfg.model_uri} (raise --max-steps to train on)")
        return 0
    cfg = dataclasses.replace(cfg, use_gpu=connect(ray_options))
    cpus = ray.cluster_resources().get("CPU", 0)
    if not cfg.use_gpu and cfg.num_workers * cfg.cpus_per_worker > cpus:
        print(f"[train] warning: {cfg.num_workers} workers x {cfg.cpus_per_worker:g} CPU need more than the {cpus:g} "
              "CPUs of the cluster; they wait for more nodes (lower --cpus-per-worker)", file=sys.stderr)
    data = plan_data(cfg)  # a bad join is a ValueError: one "[train] error:" line, exit 1
    fault = os.environ.get(FAIL_AT_STEP_ENV)  # test hook (see vlm3r_core.training.check_fault_injection)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": dataclasses.asdict(cfg), "data": ray.put(data)},
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=cfg.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            worker_runtime_env={"env_vars": {FAIL_AT_STEP_ENV: fault}} if fault else None,
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        print(f"[train] run {cfg.run_name} failed: {e}", file=sys.stderr)
        return 1
    m = result.metrics
    if m is None:
        print(f"[train] {cfg.run_name}: its last checkpoint was at max_steps={cfg.max_steps}; model -> {cfg.model_uri}")
        return 0
    record_model(cfg, m, time.monotonic() - started)
    print(f"[train] {cfg.run_name}: step {m['step']}/{cfg.max_steps}, loss {m['loss']:.4f}, resumed from "
          f"{m['resumed_from_step']}; model -> {cfg.model_uri}, checkpoints -> {result.path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job("train", argv, CONFIGS, train, __doc__.split("\n", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
