"""LoRA tuning of VLM-3R from precomputed tokens: the whole training policy in one place.

Two methods share everything here but the step: ``sft``, supervised tuning on the training
conversations, and ``grpo``, reinforcement tuning after it with verifiable rewards on the
benchmark rows (:mod:`vlm3r_core.rl`).

What is trained (the paper's recipe): LoRA (rank 128, alpha 256, dropout 0.05) on every linear
layer of the LLM, plus the fusion block and the projector; SigLIP, CUT3R and the LLM base weights
stay frozen. The frozen encoders never run: their outputs come from token shards.

This module holds everything a training worker does, without Ray:

- :class:`TrainConfig`: run settings (method, URIs, steps, batch, optimiser, LoRA, DeepSpeed,
  checkpoints, and GRPO's ``GRPOConfig``).
- The dtype / LoRA / DeepSpeed policy: :func:`build_model_for_training` (bf16 on GPU, fp32 on
  CPU; for GRPO the policy of ``rl.prepare_policy`` on the starting model),
  :func:`deepspeed_config` (the packaged ``configs/deepspeed/zero{2,3}.json`` with the run's
  batch, accumulation, clipping and precision filled in) and :func:`build_engine`.
- The step: :func:`lr_at` (linear warmup then cosine to zero, a pure function of the step),
  :func:`train_step` (one supervised optimiser step over ``grad_accum_steps`` micro-batches) and
  :func:`training_step`, the method's step for the worker loop (:class:`SupervisedStep`,
  :class:`GRPOStep`: rollouts, rewards and one policy update, with the metrics of all ranks).
- Checkpoints: :class:`TrainState`, :func:`save_checkpoint` / :func:`load_checkpoint` (DeepSpeed
  state of every rank, trainable weights only, the data position and every rank's random state,
  so a resumed run repeats the interrupted steps bit for bit) and :func:`export_model`
  (``save_pretrained``), after which :func:`write_run_summary` marks the run finished
  (:func:`finished_run`).
- :class:`MetricsWindow`: loss of every step (GRPO: every step's rewards per question type, KL,
  answer length, degenerate and clip fractions too), learning rate, samples and tokens per second
  between reports.
- A test hook, :func:`check_fault_injection`: the environment variable ``VLM3R_TEST_FAIL_AT_STEP``
  makes every worker fail once, to test recovery.

``jobs/train.py`` wires these into Ray Train.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import torch
import torch.distributed as dist

from vlm3r_core import storage
from vlm3r_core.presets import get_preset
from vlm3r_core.rl import (
    DeepSpeedPolicyUpdate,
    GRPOConfig,
    GRPOStepResult,
    HFRolloutBackend,
    grpo_step,
    merge_step_results,
    prepare_policy,
)
from vlm3r_core.train_data import RolloutCollator, RolloutInputs, TrainBatch, TrainCollator
from vlm3r_core.vlm import COMPONENTS, Vlm3rConfig, Vlm3rForConditionalGeneration, Vlm3rProcessor
from vlm3r_core.vlm.checkpoint import CONFIG_FILE, read_saved_config

logger = logging.getLogger(__name__)

DEEPSPEED_CONFIG_DIR = Path(__file__).parent / "configs" / "deepspeed"
DEEPSPEED_CONFIGS = {2: "zero2.json", 3: "zero3.json"}
CHECKPOINT_TAG = "deepspeed"
RNG_DIR = "rng"
FAIL_AT_STEP_ENV = "VLM3R_TEST_FAIL_AT_STEP"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run.

    Args:
        qa_uri: ``sft``: training conversations (LLaVA form with ``video_id``); ``grpo``: benchmark
            rows (a split folder ``<root>/qa/benchmark/train``, as evaluation reads them); a file or a folder.
        tokens_uri: token shard set ``<root>/tokens/<encoder>`` with ``vision_features``.
        out_uri: run folder: checkpoints under ``<out>/checkpoints/<run_name>``, the exported
            model at ``<out>/model``, the metrics of every checkpoint in ``<out>/metrics.jsonl``,
            skipped conversations in ``<out>/skipped.jsonl``, the finished run in
            ``<out>/summary.json``.
        method: ``sft`` (supervised tuning on conversations) or ``grpo`` (reinforcement tuning
            after it: sampled answers scored by the official metric, see ``GRPOConfig``).
        preset: model preset (``vlm3r_core.presets``).
        init_model: ``grpo`` only: the model it starts from, a ``save_pretrained`` folder or URI
            (the supervised run's ``<out>/model``) of the same preset; none: the preset's base model.
        run_name: Ray Train run name; re-running with the same ``out_uri`` and name resumes.
        num_workers: data-parallel training workers.
        use_gpu: one GPU per worker, bf16 and NCCL; otherwise CPU, fp32 and gloo.
        cpus_per_worker: CPUs reserved per worker.
        zero_stage: DeepSpeed ZeRO stage, 2 or 3.
        max_steps: optimiser steps of the whole run.
        micro_batch_size: samples per worker per forward pass (``grpo``: prompts, each forwarded
            with its ``group_size`` sampled answers).
        grad_accum_steps: micro-batches per optimiser step (``grpo``: the step's
            ``micro_batch_size * grad_accum_steps`` prompts are sampled together).
        lr: peak learning rate (paper: 2e-5 for the 7B model).
        warmup_ratio: fraction of ``max_steps`` with a linear warmup (paper: 0.03).
        weight_decay: AdamW weight decay (paper: 0).
        max_grad_norm: gradient clipping by global norm.
        lora_r, lora_alpha, lora_dropout: LoRA on every linear layer of the LLM; None keeps the
            preset's (``vlm3r-7b``: 128, 256, 0.05, the paper's).
        seed: seeds the LoRA init (same on every rank), dropout and the data order.
        shuffle_buffer: each worker shuffles its videos, then the conversations within windows
            of consecutive videos holding at least this many (the window's videos are in memory
            together); 0: no shuffle.
        checkpoint_every: steps between checkpoints (one is also written at the end).
        keep_checkpoints: checkpoints kept in storage (older ones are deleted).
        max_failures: worker-group restarts from the last checkpoint before the run fails.
        log_every: steps between progress lines of rank 0.
        grpo: GRPO's settings (``method = "grpo"``).
    """

    qa_uri: str = field(metadata={"flag": "--qa"})
    tokens_uri: str = field(metadata={"flag": "--tokens"})
    out_uri: str = field(metadata={"flag": "--out"})
    method: Literal["sft", "grpo"] = "sft"
    preset: str = "tiny"
    init_model: str | None = None
    run_name: str = "vlm3r-lora"
    num_workers: int = 2
    use_gpu: bool = field(default=False, metadata={"cli": False})  # from the job's --gpu (RayOptions)
    cpus_per_worker: float = 1.0
    zero_stage: int = 2
    max_steps: int = 1000
    micro_batch_size: int = 1
    grad_accum_steps: int = 1
    lr: float = 2e-5
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    lora_r: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    seed: int = 0
    shuffle_buffer: int = 256
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    max_failures: int = 3
    log_every: int = 10
    grpo: GRPOConfig = field(default_factory=GRPOConfig)

    def __post_init__(self):
        for name in ("qa_uri", "tokens_uri", "out_uri", "preset", "run_name"):
            if not getattr(self, name):
                raise ValueError(f"TrainConfig.{name} must not be empty")
        if self.method not in ("sft", "grpo"):
            raise ValueError(f"method must be 'sft' or 'grpo', got {self.method!r}")
        if self.init_model is not None and self.method != "grpo":
            raise ValueError("init_model is where method 'grpo' starts; supervised tuning starts from the preset")
        if self.zero_stage not in DEEPSPEED_CONFIGS:
            raise ValueError(f"zero_stage must be one of {sorted(DEEPSPEED_CONFIGS)}, got {self.zero_stage}")
        for name in ("num_workers", "max_steps", "micro_batch_size", "grad_accum_steps", "checkpoint_every",
                     "keep_checkpoints", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.cpus_per_worker <= 0 or self.lr <= 0 or self.max_grad_norm <= 0:
            raise ValueError("cpus_per_worker, lr and max_grad_norm must be > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0 or self.shuffle_buffer < 0 or self.max_failures < 0 or self.seed < 0:
            raise ValueError("weight_decay, shuffle_buffer, max_failures and seed must be >= 0")

    @property
    def dtype(self) -> torch.dtype:
        """Compute dtype: bf16 on GPU, fp32 on CPU (gloo, no fast bf16 kernels)."""
        return torch.bfloat16 if self.use_gpu else torch.float32

    @property
    def storage_path(self) -> str:
        """Ray Train ``storage_path``: ``<out>/checkpoints`` (absolute for local folders)."""
        uri = storage.join(self.out_uri, "checkpoints")
        return uri if storage.is_remote(uri) else storage.filesystem(uri)[1]

    @property
    def model_uri(self) -> str:
        return storage.join(self.out_uri, "model")

    @property
    def metrics_uri(self) -> str:
        return storage.join(self.out_uri, "metrics.jsonl")

    @property
    def skipped_uri(self) -> str:
        return storage.join(self.out_uri, "skipped.jsonl")

    @property
    def summary_uri(self) -> str:
        return storage.join(self.out_uri, "summary.json")

    @property
    def warmup_steps(self) -> int:
        return math.ceil(self.warmup_ratio * self.max_steps)

    @property
    def stream_batches(self) -> tuple[int, int]:
        """``(samples per batch, batches per step)`` of each worker's data stream: the micro-batches
        for ``sft``; for ``grpo`` one batch of the step's prompts (sampled together; the update
        splits their answers into ``grad_accum_steps`` forwards itself)."""
        if self.method == "grpo":
            return self.micro_batch_size * self.grad_accum_steps, 1
        return self.micro_batch_size, self.grad_accum_steps


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warmup, then cosine to zero.

    A pure function of the step, so a resumed run continues the same curve with no scheduler
    state in the checkpoint.
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def deepspeed_config(cfg: TrainConfig) -> dict:
    """The packaged DeepSpeed config of ``cfg.zero_stage`` with every ``"auto"`` filled from ``cfg``."""
    path = DEEPSPEED_CONFIG_DIR / DEEPSPEED_CONFIGS[cfg.zero_stage]
    config = json.loads(path.read_text())
    config["train_micro_batch_size_per_gpu"] = cfg.micro_batch_size
    config["gradient_accumulation_steps"] = cfg.grad_accum_steps
    config["gradient_clipping"] = cfg.max_grad_norm
    config["bf16"]["enabled"] = cfg.dtype == torch.bfloat16
    left = [k for k, v in _flatten(config).items() if v == "auto"]
    if left:
        raise ValueError(f"{path}: unfilled 'auto' values: {left}")
    return config


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


SHM_COMM_OP = "deepspeed_shm_comm"


def import_deepspeed():
    """DeepSpeed, with its CPU shared-memory all-reduce op switched off (engines, exports and the
    single-process group are made through this, before DeepSpeed's communication backend starts).

    On the CPU accelerator, DeepSpeed's communication backend JIT-compiles that op on its first use
    on a machine (about a minute) and loads it in every worker (about 3 s per worker group start).
    It only serves ``inference_all_reduce`` of tensor-parallel inference (``deepspeed.module_inject``),
    which training never calls: ZeRO's collectives go through ``torch.distributed`` (gloo on the
    CPU, NCCL on GPUs). Marking it incompatible is DeepSpeed's own switch for a platform without it.
    """
    import deepspeed

    deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False
    return deepspeed


@contextlib.contextmanager
def single_process_group(backend: str = "gloo") -> Iterator[None]:
    """``torch.distributed`` with this process as its only rank, as a DeepSpeed engine needs, for
    benchmarks, tools and tests that run outside Ray Train; removed on exit if this call made it
    (with DeepSpeed's cached copy of its world group, so a later group works, and the rank
    variables it set)."""
    deepspeed = import_deepspeed()
    from deepspeed.utils import groups as deepspeed_groups

    if dist.is_initialized():
        yield
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    deepspeed.init_distributed(dist_backend=backend)
    try:
        yield
    finally:
        dist.destroy_process_group()
        deepspeed_groups._WORLD_GROUP = None  # engines broadcast over its clone; it died with the group
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def training_model_config(cfg: TrainConfig) -> Vlm3rConfig:
    """The config of the model trained: the preset's (or ``init_model``'s) with the run's dtype
    (bf16 on GPU, fp32 on CPU) and LoRA overrides.

    Raises:
        ValueError: ``init_model`` is a model of another preset.
    """
    lora = {"lora_r": cfg.lora_r, "lora_alpha": cfg.lora_alpha, "lora_dropout": cfg.lora_dropout}
    overrides = {k: v for k, v in lora.items() if v is not None} | {"dtype": "bfloat16" if cfg.use_gpu else "float32"}
    if cfg.init_model is None:
        return get_preset(cfg.preset, **overrides)
    config = read_saved_config(cfg.init_model)
    if config.name != cfg.preset:
        raise ValueError(f"init_model {cfg.init_model} is a {config.name!r} model, not preset {cfg.preset!r}")
    return config.replace(**overrides)


TRAINED_PARTS = tuple(c for c in COMPONENTS if c not in ("vision_tower", "cut3r"))


def build_model_for_training(cfg: TrainConfig) -> tuple[Vlm3rForConditionalGeneration, Vlm3rProcessor]:
    """The model a run trains, and its processor.

    ``sft``: the VLM with LoRA applied, only fusion + projector + newline + LoRA trainable; the
    LLM's base weights are loaded (with the projector init of a LLaVA-Video checkpoint). ``grpo``:
    the model of ``init_model`` (or the preset's base model) made a policy by
    ``rl.prepare_policy``: its supervised LoRA merged into the LLM, a fresh adapter the only
    trainable part, the model as loaded the reference.

    The frozen encoders are not built (they never run in training, their outputs come from the
    token shards). The new adapter's init is seeded with ``cfg.seed`` on every rank (identical
    replicas); afterwards the seed is offset by the rank so dropout (SFT) and sampling (GRPO)
    differ between workers.
    """
    vlm_config = training_model_config(cfg)
    seed_everything(cfg.seed)
    if cfg.method == "grpo" and cfg.init_model is not None:
        model = Vlm3rForConditionalGeneration.from_pretrained(cfg.init_model, components=TRAINED_PARTS)
        processor = Vlm3rProcessor.from_pretrained(cfg.init_model)
        model.config = vlm_config  # the run's dtype, and LoRA overrides for the new adapter
    else:
        model = Vlm3rForConditionalGeneration.from_config(vlm_config, components=TRAINED_PARTS)
        processor = Vlm3rProcessor.from_config(vlm_config)
    if cfg.method == "grpo":
        prepare_policy(model)
    else:
        model.apply_lora()
    model.to(cfg.dtype).train()
    seed_everything(cfg.seed + rank_and_world()[0])
    return model, processor


def build_engine(cfg: TrainConfig, model: torch.nn.Module):
    """Wraps the model in a DeepSpeed engine with AdamW over the trainable parameters.

    The learning rate is set by :func:`train_step` from :func:`lr_at`, so no scheduler is given to
    DeepSpeed. Ray Train (or the caller) has already set up ``torch.distributed``.
    """
    deepspeed = import_deepspeed()

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=lr_at(cfg, 0), betas=(0.9, 0.999), weight_decay=cfg.weight_decay, fused=cfg.use_gpu
    )
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=deepspeed_config(cfg))
    return engine


def set_lr(engine, lr: float) -> None:
    """Sets the learning rate of the engine's optimiser for the next step."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


@dataclass(frozen=True)
class StepResult:
    """One optimiser step on one worker: mean loss of its micro-batches, samples, LLM tokens, grad norm.

    ``details``: the method's metrics of the step over all workers (GRPO:
    ``GRPOStepResult.to_dict()`` of the merged step), the same on every rank; None for SFT.
    """

    loss: float
    num_samples: int
    num_tokens: int
    grad_norm: float | None
    details: dict | None = None


def train_step(engine, micro_batches: Sequence[TrainBatch], lr: float) -> StepResult:
    """One optimiser step: forward/backward over ``grad_accum_steps`` micro-batches, then update.

    DeepSpeed divides each loss by the accumulation steps, reduces gradients across workers, clips
    them to ``gradient_clipping`` and steps AdamW on the last micro-batch.

    Args:
        engine: the DeepSpeed engine of :func:`build_engine`.
        micro_batches: ``TrainBatch`` list of length ``engine.gradient_accumulation_steps()``.
        lr: learning rate of this step (:func:`lr_at`).
    """
    if len(micro_batches) != engine.gradient_accumulation_steps():
        raise ValueError(
            f"train_step needs {engine.gradient_accumulation_steps()} micro-batches, got {len(micro_batches)}"
        )
    set_lr(engine, lr)
    losses = []
    for batch in micro_batches:
        batch = batch.to(engine.device)
        out = engine(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels, features=batch.features
        )
        if not torch.isfinite(out.loss):
            raise FloatingPointError(f"non-finite loss {out.loss.item()} (lr {lr:.3g})")
        engine.backward(out.loss)
        engine.step()
        losses.append(out.loss.detach().float())
    grad_norm = engine.get_global_grad_norm()
    return StepResult(
        loss=float(torch.stack(losses).mean()),
        num_samples=sum(b.num_samples for b in micro_batches),
        num_tokens=sum(b.num_tokens for b in micro_batches),
        grad_norm=None if grad_norm is None else float(grad_norm),
    )


class TrainingStep(Protocol):
    """What differs between the methods on a worker: ``collate`` turns the stream's samples into
    a batch, a call runs one optimiser step on the step's batches at learning rate ``lr``."""

    collate: Callable[[Sequence], object]

    def __call__(self, batches: Sequence, lr: float) -> StepResult: ...


class SupervisedStep:
    """``sft``: :func:`train_step` on the collated micro-batches (:class:`TrainCollator`)."""

    def __init__(self, cfg: TrainConfig, engine, processor: Vlm3rProcessor):
        self.engine = engine
        self.collate = TrainCollator(processor, cfg.dtype)

    def __call__(self, batches: Sequence[TrainBatch], lr: float) -> StepResult:
        return train_step(self.engine, batches, lr)


class GRPOStep:
    """``grpo``: one ``rl.grpo_step`` on this worker's prompts of the step (:class:`RolloutCollator`).

    Rollouts run on the worker's own policy (``engine.module``; ZeRO-3 gathers its weights for
    generation), the update through the DeepSpeed engine, forwarding ``micro_batch_size`` prompts'
    answers at a time. The workers agree whether to update (``rl.signal_on_any_rank``), and every
    step's metrics are merged over all workers (``rl.merge_step_results``) into
    ``StepResult.details``. A collective: every rank calls it at every step.
    """

    def __init__(self, cfg: TrainConfig, engine, processor: Vlm3rProcessor):
        self.engine, self.processor = engine, processor
        self.config = dataclasses.replace(
            cfg.grpo, micro_batch_size=cfg.micro_batch_size * cfg.grpo.group_size, lr=cfg.lr,
            weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm,
        )  # fmt: skip
        self.update = DeepSpeedPolicyUpdate(engine)
        self.backend = HFRolloutBackend(engine.module, self.update.gathered_parameters)
        self.collate = RolloutCollator(processor, cfg.dtype, cfg.grpo.answer_form)

    def __call__(self, batches: Sequence[RolloutInputs], lr: float) -> StepResult:
        (inputs,) = batches
        set_lr(self.engine, lr)
        result = grpo_step(self.engine.module, self.processor, inputs.examples, inputs.features.to(self.engine.device),
                           self.config, self.backend, self.update)  # fmt: skip
        merged = merge_step_results(all_ranks(result))
        completions = inputs.num_samples * self.config.group_size  # the same on every worker
        return StepResult(loss=result.loss, num_samples=inputs.num_samples,
                          num_tokens=round(merged.mean_completion_tokens * completions),
                          grad_norm=result.grad_norm, details=merged.to_dict())  # fmt: skip


def training_step(cfg: TrainConfig, engine, processor: Vlm3rProcessor) -> TrainingStep:
    """The step of ``cfg.method`` for the worker loop."""
    return (GRPOStep if cfg.method == "grpo" else SupervisedStep)(cfg, engine, processor)


def all_ranks(value: GRPOStepResult) -> list[GRPOStepResult]:
    """``value`` of every rank, in rank order (a collective; ``[value]`` without ``torch.distributed``)."""
    world = rank_and_world()[1]
    if world == 1:
        return [value]
    out: list = [None] * world
    dist.all_gather_object(out, value)
    return out


@dataclass
class TrainState:
    """Where a run is; saved in every checkpoint.

    Attributes:
        step: optimiser steps done.
        epoch, batch_in_epoch: data position of the last micro-batch used (batches counted from 1).
        samples_seen, tokens_seen: totals over all workers.
        resumed_from_step: step of the checkpoint this attempt started from (None: from scratch).
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    tokens_seen: int = 0
    resumed_from_step: int | None = None

    def advance(self, result: StepResult, position: tuple[int, int], world_size: int) -> None:
        """Counts one finished step (workers take equal batches, so totals scale by the world size)."""
        self.step += 1
        self.epoch, self.batch_in_epoch = position
        self.samples_seen += result.num_samples * world_size
        self.tokens_seen += result.num_tokens * world_size


def save_checkpoint(engine, state: TrainState, directory: str) -> None:
    """Writes this rank's DeepSpeed state (trainable weights, optimiser shard), the train state and
    this rank's random state (dropout) under ``rng/rank-<r>.pt``.

    Every rank calls it with its own local folder; Ray Train merges the folders into one
    checkpoint in storage. Frozen weights are not saved (they come from the preset).
    """
    engine.save_checkpoint(
        directory, tag=CHECKPOINT_TAG, client_state={"train_state": asdict(state)}, exclude_frozen_parameters=True
    )
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    path = Path(directory) / RNG_DIR / f"rank-{rank_and_world()[0]}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(rng, path)


def load_checkpoint(engine, directory: str) -> TrainState:
    """Restores weights, optimiser state and this rank's random state saved by :func:`save_checkpoint`;
    returns the train state."""
    path, client_state = engine.load_checkpoint(directory, tag=CHECKPOINT_TAG, load_module_strict=False)
    if path is None or "train_state" not in client_state:
        raise ValueError(f"{directory}: not a training checkpoint (no DeepSpeed state tagged {CHECKPOINT_TAG!r})")
    rng_path = Path(directory) / RNG_DIR / f"rank-{rank_and_world()[0]}.pt"
    if rng_path.exists():  # absent when resuming with more workers than saved the checkpoint
        rng = torch.load(rng_path, weights_only=True)
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
    else:
        logger.warning("[train] %s: no random state for this rank; dropout will differ from the first run", directory)
    state = TrainState(**client_state["train_state"])
    state.resumed_from_step = state.step
    return state


def check_fault_injection(state: TrainState) -> None:
    """TEST HOOK: with ``VLM3R_TEST_FAIL_AT_STEP=<n>`` in the workers' environment, an attempt that
    did not start from a checkpoint fails just before step ``n``, so the worker group restarts
    from the last checkpoint. Not a setting of the product: tests set it to check recovery."""
    value = os.environ.get(FAIL_AT_STEP_ENV)
    if value and state.resumed_from_step is None and state.step + 1 == int(value):
        raise RuntimeError(f"fault injection: worker fails before step {value} ({FAIL_AT_STEP_ENV})")


def export_model(engine, processor: Vlm3rProcessor, uri: str) -> None:
    """Writes the trained model in the ``save_pretrained`` layout (LoRA adapter, fusion, projector).

    Called on every rank: under ZeRO-3 the trainable weights are gathered first; rank 0 writes.
    """
    deepspeed = import_deepspeed()

    model = engine.module
    gather = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(list(model.trainable_parameters()), enabled=gather):
        if rank_and_world()[0] == 0:
            model.save_pretrained(uri, processor)
    if dist.is_initialized():
        dist.barrier()


def write_run_summary(cfg: TrainConfig, state: TrainState, metrics: dict | None) -> None:
    """Marks the run finished (rank 0, after :func:`export_model`): ``<out>/summary.json``."""
    if rank_and_world()[0] != 0:
        return
    storage.write_json(cfg.summary_uri, {
        "run_name": cfg.run_name,
        "method": cfg.method,
        "step": state.step,
        "epoch": state.epoch,
        "samples_seen": state.samples_seen,
        "tokens_seen": state.tokens_seen,
        "loss": None if metrics is None else metrics["loss"],
        "reward_mean": None if metrics is None else metrics.get("reward_mean"),
        "model": cfg.model_uri,
        # GRPO: the last window's means (grpo_window_means), rewards per question type included
        **{k: v for k, v in (metrics or {}).items() if k in GRPO_WINDOW_KEYS or k.startswith("reward/")},
    })


def finished_run(cfg: TrainConfig) -> dict | None:
    """The summary of run ``cfg.run_name`` when it already reached ``cfg.max_steps`` and its model
    was exported (nothing left to do), else None."""
    if not storage.exists(cfg.summary_uri):
        return None
    summary = storage.read_json(cfg.summary_uri)
    same = summary.get("run_name") == cfg.run_name and summary.get("method", "sft") == cfg.method
    done = same and summary.get("step", 0) >= cfg.max_steps
    return summary if done and storage.exists(storage.join(cfg.model_uri, CONFIG_FILE)) else None


GRPO_WINDOW_KEYS = ("reward_mean", "reward_std", "accuracy_mean", "format_mean", "kl", "clip_fraction",
                    "degenerate_fraction", "mean_completion_tokens")  # fmt: skip


class MetricsWindow:
    """Loss and throughput since the last report; rank 0 logs progress every ``log_every`` steps.

    Steps with ``StepResult.details`` (GRPO) are also kept whole: the metrics log lists them
    under ``steps``, and the report averages :data:`GRPO_WINDOW_KEYS` over the window.
    """

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self._reset()

    def _reset(self) -> None:
        self.losses: list[float] = []
        self.samples = 0
        self.tokens = 0
        self.grad_norm: float | None = None
        self.steps: list[dict] = []
        self.started = time.perf_counter()

    def add(self, result: StepResult, state: TrainState) -> None:
        self.losses.append(result.loss)
        self.samples += result.num_samples
        self.tokens += result.num_tokens
        self.grad_norm = result.grad_norm
        if result.details is not None:
            self.steps.append({"step": state.step, **result.details})
        if state.step % self.cfg.log_every == 0 and rank_and_world()[0] == 0:
            loss = result.loss if result.details is None else result.details["loss"]  # GRPO: over all workers
            logger.info("[train] step %d/%d loss %.4f lr %.3g%s", state.step, self.cfg.max_steps, loss,
                        lr_at(self.cfg, state.step - 1), grpo_progress(result.details))

    def metrics(self, state: TrainState) -> dict:
        """Metrics of the window, averaged (loss) or summed (throughput) over all workers; resets it.

        ``step_losses`` holds the loss of each step of the window (mean over workers), ending
        with step ``state.step``. A collective: every rank must call it at the same step.
        Samples are prompts for GRPO, tokens its sampled answer tokens. The metrics log
        (``cfg.metrics_uri``) also gets GRPO's ``steps``; the returned report does not.
        """
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        totals = torch.tensor([self.samples, self.tokens, *self.losses], dtype=torch.float64, device=self.device)
        rank, world = rank_and_world()
        if world > 1:
            dist.all_reduce(totals)
        samples, tokens, *loss_sums = totals.tolist()
        step_losses = [loss / world for loss in loss_sums]
        metrics = {
            "step": state.step,
            "epoch": state.epoch,
            "loss": sum(step_losses) / max(len(step_losses), 1),
            "step_losses": step_losses,
            "lr": lr_at(self.cfg, state.step - 1),
            "grad_norm": self.grad_norm,
            "samples_per_s": samples / elapsed,
            "samples_per_s_per_worker": samples / elapsed / world,
            "tokens_per_s": tokens / elapsed,
            "samples_seen": state.samples_seen,
            "tokens_seen": state.tokens_seen,
            "resumed_from_step": state.resumed_from_step,
        }
        if self.steps:
            metrics.update(grpo_window_means(self.steps))
        if rank == 0:
            logger.info("[train] %s", " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if k != "step_losses"))
            append_metrics(self.cfg.metrics_uri, {**metrics, "steps": self.steps} if self.steps else metrics)
        self._reset()
        return metrics


def grpo_window_means(steps: Sequence[dict]) -> dict[str, float]:
    """GRPO's metrics over a window of steps: the mean of each of :data:`GRPO_WINDOW_KEYS` over
    the steps, and per question type the mean reward over all its answers of the window
    (``reward/<question_type>/mean``, weighted by the steps' counts) and their number (``.../count``)."""
    out = {k: float(np.mean([s[k] for s in steps])) for k in GRPO_WINDOW_KEYS}
    types = sorted({k.split("/")[1] for s in steps for k in s if k.startswith("reward/") and k.endswith("/count")})
    for qt in types:
        counted = [(s[f"reward/{qt}/count"], s[f"reward/{qt}/mean"]) for s in steps if s.get(f"reward/{qt}/count")]
        total = sum(n for n, _ in counted)
        out[f"reward/{qt}/mean"] = sum(n * m for n, m in counted) / total
        out[f"reward/{qt}/count"] = total
    return out


def append_metrics(uri: str, metrics: dict) -> None:
    """Adds one report to the run's metrics log (JSON lines, rewritten atomically).

    Rows at or after ``metrics["step"]`` are dropped first: they came from an attempt that failed
    after reporting them, and the resumed attempt reports those steps again.
    """
    rows = storage.read_jsonl(uri) if storage.exists(uri) else []
    storage.write_jsonl(uri, [r for r in rows if r["step"] < metrics["step"]] + [metrics])


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def grpo_progress(details: Mapping | None) -> str:
    """The GRPO part of a progress line, from a step's metrics or a window's means
    (:func:`grpo_window_means`): rewards (overall, and per question type with its std where the
    metrics have one), KL, answer length, degenerate and clip fractions; empty for SFT."""
    if details is None or "reward_mean" not in details:
        return ""
    types = sorted(k.split("/")[1] for k in details if k.startswith("reward/") and k.endswith("/mean"))
    by_type = ", ".join(f"{qt} {details[f'reward/{qt}/mean']:.3f}"
                        + (f" ± {details[f'reward/{qt}/std']:.3f}" if f"reward/{qt}/std" in details else "")
                        for qt in types)  # fmt: skip
    return (f" reward {details['reward_mean']:.3f} (std {details['reward_std']:.3f}; {by_type}) kl {details['kl']:.4g} "
            f"answer {details['mean_completion_tokens']:.1f} tokens degenerate {details['degenerate_fraction']:.2f} "
            f"clip {details['clip_fraction']:.3f}")  # fmt: skip
