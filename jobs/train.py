"""Tune VLM-3R (LoRA + fusion block + projector) from precomputed token shards: Ray Train + DeepSpeed.

On a cluster::

    ray job submit --working-dir . -- python jobs/train.py \\
        --qa s3://bucket/data/qa/conversations/train.jsonl --tokens s3://bucket/data/tokens/<encoder> \\
        --out s3://bucket/runs/vlm3r-lora --preset vlm3r-7b --num-workers 8 --gpu --zero-stage 2 \\
        --max-steps 8000 --grad-accum-steps 16 --lr 2e-5

Locally, with no cluster (a local Ray, CPU workers, fp32, gloo)::

    python jobs/train.py --qa ./vlm3r-data/qa/conversations/train.jsonl \\
        --tokens ./vlm3r-data/tokens/tiny-112px-32f-vf --out ./vlm3r-data/runs/tiny --preset tiny \\
        --num-workers 2 --cpus-per-worker 0.5 --max-steps 200 --lr 1e-3

Writes checkpoints to ``<out>/checkpoints/<run-name>/`` (re-running with the same ``--out`` and
``--run-name`` resumes), the trained model to ``<out>/model`` with its model card (``README.md``:
data, steps, batch, hardware, wall time; ``vlm3r_core/model_card.py``) and conversations without
tokens to ``<out>/skipped.jsonl``. Every ``TrainConfig`` field is a flag (``--max-steps``, ``--lr``, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time

import ray
import ray.train
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from jobs.common import init_ray
from vlm3r_core import storage
from vlm3r_core.model_card import training_provenance, write_provenance
from vlm3r_core.train_data import (
    TOKEN_COLUMNS,
    MicroBatchStream,
    TrainCollator,
    join_conversations,
    plan_training_join,
)
from vlm3r_core.training import (
    MetricsWindow,
    TrainConfig,
    TrainState,
    build_engine,
    build_model_for_training,
    check_fault_injection,
    export_model,
    load_checkpoint,
    lr_at,
    rank_and_world,
    save_checkpoint,
    train_step,
)

FLAG_NAMES = {"qa_uri": "--qa", "tokens_uri": "--tokens", "out_uri": "--out", "use_gpu": "--gpu"}


def _field_help() -> dict[str, str]:
    """Each ``TrainConfig`` field's description, from the Args section of its docstring."""
    helps: dict[str, str] = {}
    names: list[str] = []
    for line in TrainConfig.__doc__.split("Args:")[1].splitlines():
        text = line.strip()
        head, sep, rest = text.partition(": ")
        if sep and not line.startswith(" " * 12):  # "name[, name]: text" starts a field
            names, text = [n.strip() for n in head.split(",")], rest
        for name in names:
            helps[name] = f"{helps.get(name, '')} {text}".strip()
    return helps


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    helps = _field_help()
    for field in dataclasses.fields(TrainConfig):
        flag = FLAG_NAMES.get(field.name, "--" + field.name.replace("_", "-"))
        if field.type == "bool":
            parser.add_argument(flag, dest=field.name, action="store_true", help=helps[field.name])
            continue
        required = field.default is dataclasses.MISSING
        kind = {"str": str, "int": int, "float": float, "int | None": int, "float | None": float}[field.type]
        parser.add_argument(flag, dest=field.name, type=kind, required=required, default=None if required else field.default,
                            help=helps[field.name] + ("" if required else " (default: %(default)s)"))
    args = vars(parser.parse_args(argv))
    for name in ("qa_uri", "tokens_uri", "out_uri"):  # workers run in their own directory
        args[name] = storage.absolute(args[name])
    return TrainConfig(**args)


def build_dataset(cfg: TrainConfig) -> ray.data.Dataset:
    """Token rows streamed from the shards, one row per training conversation of each video."""
    plan = plan_training_join(cfg.qa_uri, cfg.tokens_uri)
    if plan.skipped:
        storage.write_jsonl(cfg.skipped_uri, plan.skipped)
        print(f"[train] {len(plan.skipped)} conversations have no tokens, skipped: {cfg.skipped_uri}", flush=True)
    else:
        storage.remove(cfg.skipped_uri)
    fs, path = storage.pyarrow_filesystem(cfg.tokens_uri)
    tokens = ray.data.read_parquet(path, filesystem=fs, file_extensions=["parquet"])
    tokens = tokens.select_columns(["video_id", *TOKEN_COLUMNS])  # pushed down into the read
    return tokens.map_batches(join_conversations, fn_kwargs={"index": plan.index()}, batch_size=4, num_cpus=0.25)


def train_loop_per_worker(config: dict) -> None:
    cfg = TrainConfig(**config)
    model, processor = build_model_for_training(cfg)
    engine = build_engine(cfg, model)
    state = TrainState()
    if (checkpoint := ray.train.get_checkpoint()) is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(engine, directory)
    stream = MicroBatchStream(ray.train.get_dataset_shard("train"), TrainCollator(processor, cfg.dtype),
                              cfg.micro_batch_size, cfg.grad_accum_steps, cfg.seed, cfg.shuffle_buffer,
                              position=(state.epoch, state.batch_in_epoch))
    window, world_size = MetricsWindow(cfg, engine.device), rank_and_world()[1]
    while state.step < cfg.max_steps:
        check_fault_injection(cfg, state)
        result = train_step(engine, stream.next_step(), lr_at(cfg, state.step))
        state.advance(result, stream.position, world_size)
        window.add(result, state)
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.max_steps:
            with tempfile.TemporaryDirectory() as directory:
                save_checkpoint(engine, state, directory)
                ray.train.report(window.metrics(state), checkpoint=Checkpoint.from_directory(directory))
    export_model(engine, processor, cfg.model_uri)


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
            dataclasses.asdict(cfg), steps=(metrics or {}).get("step"), loss=(metrics or {}).get("loss"),
            hardware=hardware(cfg), wall_time_s=wall_time_s,
        )  # fmt: skip
        write_provenance(cfg.model_uri, provenance)
    except (OSError, ValueError) as e:
        print(f"[train] warning: no model card for {cfg.model_uri}: {e}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    cfg = parse_args(argv)
    init_ray()
    cpus = ray.cluster_resources().get("CPU", 0)
    if not cfg.use_gpu and cfg.num_workers * cfg.cpus_per_worker >= cpus:
        print(f"[train] warning: {cfg.num_workers} workers x {cfg.cpus_per_worker:g} CPU take all {cpus:g} CPUs of the "
              "cluster and Ray Data needs some to stream the tokens; lower --cpus-per-worker", file=sys.stderr)
    try:
        dataset = build_dataset(cfg)
    except (ValueError, FileNotFoundError) as e:
        print(f"[train] cannot train: {e}", file=sys.stderr)
        return 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dataclasses.asdict(cfg),
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=cfg.storage_path,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
        ),
        datasets={"train": dataset},
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as e:
        print(f"[train] run {cfg.run_name} failed: {e}", file=sys.stderr)
        return 1
    m = result.metrics
    if m is None:
        print(f"[train] {cfg.run_name}: already at max_steps={cfg.max_steps}; model -> {cfg.model_uri}")
        return 0
    record_model(cfg, m, time.monotonic() - started)
    print(f"[train] {cfg.run_name}: step {m['step']}/{cfg.max_steps}, loss {m['loss']:.4f}, resumed from "
          f"{m['resumed_from_step']}; model -> {cfg.model_uri}, checkpoints -> {result.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
