"""GRPO proper: group advantages, the clipped-ratio + k3 KL loss, the policy and its update, the step.

The formulas are in :mod:`vlm3r_core.rl`. Legend: ``B`` prompts, ``G`` samples per prompt,
``N = B * G`` completions in group-major order, ``n`` rows of a micro-batch, ``K`` completion
tokens (padded), ``Lp`` prompt tokens.
"""

from __future__ import annotations

import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.distributed as dist
from peft import PeftModel

from vlm3r_core.rl.config import GRPOConfig
from vlm3r_core.rl.rewards import RewardParts, RLExample, score_completion
from vlm3r_core.rl.rollout import (
    RolloutBackend,
    Rollouts,
    chunk_indices,
    chunked_logprobs,
    completion_logprobs,
    select_prompts,
)
from vlm3r_core.vlm import VideoFeatures, Vlm3rForConditionalGeneration, Vlm3rOutput, Vlm3rProcessor
from vlm3r_core.vlm.processor import TextBatch

LOG_RATIO_LIMIT = 20.0  # log-ratios are clamped to +-20 only to keep exp() finite


# Advantages and the loss ---------------------------------------------------------------------------


def group_advantages(rewards: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-normalised advantages.

    Args:
        rewards: (B, G).

    Returns:
        ``(advantages (B, G), degenerate (B,) bool)``: ``(r - mean) / (std + eps)`` with the
        population std of each group; 0 for degenerate groups (all rewards equal).
    """
    mean = rewards.mean(dim=1, keepdim=True)  # (B, 1)
    std = rewards.std(dim=1, correction=0, keepdim=True)  # (B, 1)
    degenerate = (rewards.amax(dim=1) - rewards.amin(dim=1)) <= 1e-9  # (B,)
    advantages = (rewards - mean) / (std + eps)  # (B, G)
    return advantages.masked_fill(degenerate[:, None], 0.0), degenerate


@dataclass(frozen=True)
class LossParts:
    """One micro-batch's part of the loss (with grad, already divided by the step's token count)
    and how many of its weighted tokens had the clip active."""

    loss: torch.Tensor
    clipped_tokens: int


def grpo_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    kl_beta: float,
    num_tokens: int,
) -> LossParts:
    """The clipped policy-ratio loss plus the k3 KL penalty (formulas in the module docstring).

    Args:
        logprobs: (n, K) current policy log-probs of the sampled tokens (with grad).
        old_logprobs: (n, K) the rollout policy's; ref_logprobs: (n, K) the reference policy's.
        advantages: (n,) one per completion.
        mask: (n, K) bool, the tokens that count (completion tokens of non-degenerate groups).
        num_tokens: the normaliser: tokens that count in the whole step (all micro-batches).
    """
    old, ref = old_logprobs.detach(), ref_logprobs.detach()
    ratio = torch.exp((logprobs - old).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT))  # (n, K)
    adv = advantages.detach()[:, None]  # (n, 1)
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    pg = -torch.minimum(unclipped, clipped)  # (n, K)
    ref_minus = (ref - logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)
    kl = torch.exp(ref_minus) - ref_minus - 1  # (n, K), k3 >= 0
    per_token = torch.where(mask, pg + kl_beta * kl, 0.0)
    loss = per_token.sum() / max(num_tokens, 1)
    clip_active = ((adv > 0) & (ratio > 1 + clip_eps)) | ((adv < 0) & (ratio < 1 - clip_eps))
    return LossParts(loss=loss, clipped_tokens=int((clip_active & mask).sum()))


def k3_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean k3 estimate of KL(pi || ref) over the ``mask`` tokens (0 when there is none)."""
    d = (ref_logprobs - logprobs).clamp(-LOG_RATIO_LIMIT, LOG_RATIO_LIMIT)[mask]
    return float((torch.exp(d) - d - 1).mean()) if d.numel() else 0.0


# The policy and its update -----------------------------------------------------------------------------


def prepare_policy(model: Vlm3rForConditionalGeneration) -> None:
    """Turns a (supervised-tuned) model into a GRPO policy whose reference is the model as it is now.

    Its LoRA (if any) is merged into the LLM, a fresh adapter is applied (LoRA's zero init: the
    policy starts equal to the reference) and fusion, projector and newline are frozen, since the
    reference (adapter disabled) must not move. Only the new adapter trains.
    """
    if isinstance(model.language_model, PeftModel):
        model.merge_and_unload()
    for part in (model.fusion, model.projector, model.image_newline):
        part.requires_grad_(False)
    model.apply_lora()


@contextlib.contextmanager
def dropout_off(model: Vlm3rForConditionalGeneration) -> Iterator[None]:
    """Eval mode for the block, then the model's mode again: rollouts and updates compare
    deterministic policies (the ratio and the KL are not perturbed by dropout)."""
    was_training = model.training
    model.train(False)
    try:
        yield
    finally:
        model.train(was_training)


@contextlib.contextmanager
def reference_policy(model: Vlm3rForConditionalGeneration) -> Iterator[None]:
    """The reference policy: the same model with its LoRA adapter disabled, no gradients."""
    if not isinstance(model.language_model, PeftModel):
        raise ValueError(
            "the reference policy is the model without its LoRA adapter: call prepare_policy first"
        )
    with model.language_model.disable_adapter(), torch.no_grad():
        yield


class PolicyUpdate(Protocol):
    """The forward with gradients, backward pass and optimiser step of a GRPO step, injected into
    :func:`update_policy`.

    Per micro-batch ``forward`` (the model's keyword arguments, returns its ``Vlm3rOutput``) and
    ``backward`` (the losses are already scaled so that they add up to the step's loss; ``last``
    marks the final micro-batch), then ``step`` once; it returns the gradient norm (or None).
    """

    def forward(self, **inputs) -> Vlm3rOutput: ...

    def backward(self, loss: torch.Tensor, last: bool) -> None: ...

    def step(self) -> float | None: ...


class TorchPolicyUpdate:
    """Plain PyTorch: ``loss.backward()``, clip to ``max_grad_norm``, ``optimizer.step()``."""

    def __init__(
        self, model: Vlm3rForConditionalGeneration, optimizer: torch.optim.Optimizer, max_grad_norm: float
    ):
        self.model = model
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm

    def forward(self, **inputs) -> Vlm3rOutput:
        return self.model(**inputs)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        loss.backward()

    def step(self) -> float | None:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)


def torch_policy_update(model: Vlm3rForConditionalGeneration, config: GRPOConfig) -> TorchPolicyUpdate:
    """AdamW over the model's trainable parameters (the GRPO adapter after :func:`prepare_policy`)."""
    optimizer = torch.optim.AdamW(
        model.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    return TorchPolicyUpdate(model, optimizer, config.max_grad_norm)


class DeepSpeedPolicyUpdate:
    """A DeepSpeed engine (``vlm3r_core.training.build_engine``; call :func:`grpo_step` with
    ``engine.module``): the forwards with gradients go through the engine (ZeRO-3 counts its
    micro-steps there), gradients accumulate over the micro-batches, the last one is the boundary
    where they are reduced and the optimiser steps (clipping from the engine's config)."""

    def __init__(self, engine):
        self.engine = engine

    def forward(self, **inputs) -> Vlm3rOutput:
        return self.engine(**inputs)

    def gathered_parameters(self) -> contextlib.AbstractContextManager:
        """Every weight whole on this rank, for generation (ZeRO-3 partitions them, and generation
        is not a forward, so ZeRO-3's hooks do not gather them all). A no-op below ZeRO-3."""
        import deepspeed

        stage3 = self.engine.zero_optimization_stage() == 3
        return deepspeed.zero.GatheredParameters(list(self.engine.module.parameters()), enabled=stage3)

    def backward(self, loss: torch.Tensor, last: bool) -> None:
        self.engine.set_gradient_accumulation_boundary(last)
        self.engine.backward(loss, scale_wrt_gas=False)
        self.engine.step()  # applies the update only at the boundary

    def step(self) -> float | None:
        norm = self.engine.get_global_grad_norm()
        return None if norm is None else float(norm)


# The step ------------------------------------------------------------------------------------------------


@dataclass
class RolloutBatch:
    """What one step learns from: the prompts, their samples, rewards and advantages.

    Attributes:
        examples: the B prompts' examples; prompt: (B, Lp); features: B videos.
        rollouts: N = B * G completions; texts: the N decoded answers.
        rewards: (B, G) float32 and ``parts`` (N rewards with their accuracy / format).
        advantages: (B, G); degenerate: (B,) bool.
        ref_logprobs: (N, K) the reference policy's log-probs of the sampled tokens.
    """

    examples: list[RLExample]
    prompt: TextBatch
    features: VideoFeatures
    rollouts: Rollouts
    texts: list[str]
    parts: list[RewardParts]
    rewards: torch.Tensor
    advantages: torch.Tensor
    degenerate: torch.Tensor
    ref_logprobs: torch.Tensor

    @property
    def has_signal(self) -> bool:
        """Some group's rewards differ (else an update would change nothing)."""
        return not bool(self.degenerate.all())


def signal_on_any_rank(has_signal: bool, device: torch.device) -> bool:
    """Whether any data-parallel rank has a group with signal (``has_signal`` itself without
    ``torch.distributed``). A collective: every rank calls it at the same step.

    The ranks must agree before :func:`update_policy`: its backward passes reduce gradients
    across ranks, so a rank that skipped the update would leave the others waiting. A rank whose
    groups are all degenerate still runs the update, with weight 0 on every token.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return has_signal
    flag = torch.tensor([float(has_signal)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def collect_rollouts(
    model: Vlm3rForConditionalGeneration,
    processor: Vlm3rProcessor,
    examples: Sequence[RLExample],
    features: VideoFeatures,
    config: GRPOConfig,
    backend: RolloutBackend,
    reward_fn: Callable[[RLExample, str], RewardParts] | None = None,
) -> RolloutBatch:
    """Samples G answers per example, scores them and computes advantages and reference log-probs.

    Dropout is off throughout. The prompts are ``processor.build_batch`` of the examples' user
    turns, exactly as evaluation and serving tokenise them.

    Args:
        examples: B examples (:func:`vlm3r_core.rl.rewards.build_rl_example`).
        features: their B videos.
        reward_fn: ``(example, answer text) -> RewardParts``; default
            :func:`~vlm3r_core.rl.rewards.score_completion` with ``config``'s form and weight.
    """
    if len(examples) != features.frame_mask.shape[0]:
        raise ValueError(f"got {len(examples)} examples for {features.frame_mask.shape[0]} videos")
    score = reward_fn or (
        lambda ex, text: score_completion(ex, text, config.answer_form, config.format_weight)
    )
    prompt = processor.build_batch([ex.user_message for ex in examples])
    g = config.group_size
    with dropout_off(model):
        rollouts = backend.sample(prompt, features, config)
        n = len(examples) * g
        sizes = {rollouts.completion_ids.shape[0], rollouts.mask.shape[0], rollouts.logprobs.shape[0]}
        if sizes != {n}:
            raise ValueError(f"the rollout backend returned {sorted(sizes)} completions, not B * G = {n}")
        index = torch.arange(len(examples)).repeat_interleave(g)  # (N,)
        prompts, videos = select_prompts(prompt, features, index)
        with reference_policy(model):
            ref = chunked_logprobs(
                model,
                prompts,
                rollouts.completion_ids,
                rollouts.mask,
                videos,
                config.temperature,
                config.micro_batch_size,
            )
    texts = processor.batch_decode(
        rollouts.completion_ids.masked_fill(~rollouts.mask, processor.pad_token_id)
    )
    parts = [score(examples[i // g], text) for i, text in enumerate(texts)]
    rewards = torch.tensor([p.total for p in parts], dtype=torch.float32).view(len(examples), g)  # (B, G)
    advantages, degenerate = group_advantages(rewards, config.advantage_eps)
    return RolloutBatch(
        list(examples), prompt, features, rollouts, texts, parts, rewards, advantages, degenerate, ref.cpu()
    )


@dataclass(frozen=True)
class UpdateStats:
    """One policy update: loss, share of clipped tokens, gradient norm."""

    loss: float
    clip_fraction: float
    grad_norm: float | None


def update_policy(
    model: Vlm3rForConditionalGeneration, batch: RolloutBatch, config: GRPOConfig, update: PolicyUpdate
) -> UpdateStats:
    """One policy update on a rollout batch: micro-batched forwards with gradients, then ``update.step``.

    Dropout is off. Every completion is forwarded, the degenerate groups' with weight 0, so that
    data-parallel ranks run the same number of forwards and backwards whatever their rewards.
    """
    g = config.group_size
    n = batch.rollouts.completion_ids.shape[0]
    index = torch.arange(len(batch.examples)).repeat_interleave(g)  # (N,)
    weight = batch.rollouts.mask & ~batch.degenerate[index][:, None]  # (N, K)
    advantages = batch.advantages.reshape(-1)  # (N,)
    num_tokens = int(weight.sum())
    loss_total, clipped = 0.0, 0
    chunks = list(chunk_indices(n, config.micro_batch_size))
    with dropout_off(model):
        for k, idx in enumerate(chunks):
            prompts, videos = select_prompts(batch.prompt, batch.features, index[idx])
            ids, mask = batch.rollouts.completion_ids[idx], batch.rollouts.mask[idx]
            logprobs = completion_logprobs(
                model, prompts, ids, mask, videos, config.temperature, forward=update.forward
            )  # (n, K)
            device = logprobs.device
            parts = grpo_loss(
                logprobs,
                batch.rollouts.logprobs[idx].to(device),
                batch.ref_logprobs[idx].to(device),
                advantages[idx].to(device),
                weight[idx].to(device),
                config.clip_eps,
                config.kl_beta,
                num_tokens,
            )
            if not torch.isfinite(parts.loss):
                raise FloatingPointError(f"non-finite GRPO loss {parts.loss.item()}")
            update.backward(parts.loss, last=k == len(chunks) - 1)
            loss_total += float(parts.loss.detach())
            clipped += parts.clipped_tokens
        grad_norm = update.step()
    return UpdateStats(
        loss=loss_total,
        clip_fraction=clipped / max(num_tokens, 1),
        grad_norm=grad_norm,
    )


@dataclass(frozen=True)
class GRPOStepResult:
    """Metrics of one GRPO step.

    Attributes:
        loss: the step's loss (0 when not updated); kl: mean k3 KL(policy || reference) over every
            sampled token; clip_fraction: share of the weighted tokens where the clip was active.
        reward_mean, reward_std, accuracy_mean, format_mean: over the N samples.
        reward_by_type: question type -> ``{"mean", "std", "count"}`` of its samples' rewards.
        mean_completion_tokens: tokens per completion (with the end token).
        degenerate_fraction, num_groups: groups whose rewards were all equal, and all groups.
        updated: False when every group was degenerate (no forward, backward or step ran).
        grad_norm: from the optimiser step (None when not updated or not known).
    """

    loss: float
    kl: float
    clip_fraction: float
    reward_mean: float
    reward_std: float
    accuracy_mean: float
    format_mean: float
    reward_by_type: dict[str, dict[str, float]]
    mean_completion_tokens: float
    degenerate_fraction: float
    num_groups: int
    updated: bool
    grad_norm: float | None = None

    def to_dict(self) -> dict[str, float | int | bool | None]:
        """Flat metrics for a report: ``reward/<question_type>/mean`` and the scalars."""
        out = {k: v for k, v in vars(self).items() if k != "reward_by_type"}
        for qt, stats in self.reward_by_type.items():
            out.update({f"reward/{qt}/{k}": v for k, v in stats.items()})
        return out


def summarize_rollouts(batch: RolloutBatch, config: GRPOConfig) -> dict:
    """Reward, KL, length and degeneracy metrics of a rollout batch (the update adds loss and clipping)."""
    g = config.group_size
    totals = np.array([p.total for p in batch.parts])
    by_type: dict[str, list[float]] = defaultdict(list)
    for i, p in enumerate(batch.parts):
        by_type[batch.examples[i // g].question_type].append(p.total)
    r = batch.rollouts
    return dict(
        kl=k3_kl(r.logprobs, batch.ref_logprobs, r.mask),
        reward_mean=float(totals.mean()),
        reward_std=float(totals.std()),
        accuracy_mean=float(np.mean([p.accuracy for p in batch.parts])),
        format_mean=float(np.mean([p.format for p in batch.parts])),
        reward_by_type={
            qt: {"mean": float(np.mean(v)), "std": float(np.std(v)), "count": len(v)}
            for qt, v in sorted(by_type.items())
        },
        mean_completion_tokens=float(r.mask.sum()) / r.mask.shape[0],
        degenerate_fraction=float(batch.degenerate.float().mean()),
        num_groups=len(batch.examples),
    )


def grpo_step(
    model: Vlm3rForConditionalGeneration,
    processor: Vlm3rProcessor,
    examples: Sequence[RLExample],
    features: VideoFeatures,
    config: GRPOConfig,
    backend: RolloutBackend,
    update: PolicyUpdate,
    reward_fn: Callable[[RLExample, str], RewardParts] | None = None,
) -> GRPOStepResult:
    """One GRPO step on B examples: rollouts, rewards, advantages, one policy update.

    Runs with dropout off (the model's mode is restored). When every group is degenerate nothing
    is updated (``updated=False``). Under ``torch.distributed`` every rank calls it at the same
    step with the same B: the ranks decide together (:func:`signal_on_any_rank`), so they all
    update, or all skip when no rank has a group with signal.

    Args:
        model: the policy after :func:`prepare_policy` (``engine.module`` under DeepSpeed).
        examples, features: B examples and their B videos.
        backend: samples the completions (:class:`HFRolloutBackend`).
        update: the backward pass and optimiser step (:func:`torch_policy_update`,
            :class:`DeepSpeedPolicyUpdate`).
        reward_fn: replaces the official reward (see :func:`collect_rollouts`).
    """
    batch = collect_rollouts(model, processor, examples, features, config, backend, reward_fn)
    signal = signal_on_any_rank(batch.has_signal, model.device)
    stats = update_policy(model, batch, config, update) if signal else None
    metrics = summarize_rollouts(batch, config)
    return GRPOStepResult(
        loss=stats.loss if stats else 0.0,
        clip_fraction=stats.clip_fraction if stats else 0.0,
        updated=stats is not None,
        grad_norm=stats.grad_norm if stats else None,
        **metrics,
    )


def merge_step_results(results: Sequence[GRPOStepResult]) -> GRPOStepResult:
    """The step of a data-parallel group from each rank's :class:`GRPOStepResult` (one per rank,
    e.g. from ``torch.distributed.all_gather_object``).

    Rewards are pooled exactly (means, population stds and counts per question type and over
    all samples); accuracy and format are weighted by samples, KL and completion length by
    completion tokens, the degenerate fraction by groups. The loss and the clip fraction are the
    mean over ranks (the update averages the ranks' gradients); ``grad_norm`` is the first
    rank's (the norm of the reduced gradient, the same on every rank).
    """
    if not results:
        raise ValueError("merge_step_results needs the result of at least one rank")
    counts = [sum(int(s["count"]) for s in r.reward_by_type.values()) for r in results]
    tokens = [r.mean_completion_tokens * n for r, n in zip(results, counts, strict=True)]
    groups = sum(r.num_groups for r in results)
    samples = sum(counts)

    def pooled(parts: Sequence[tuple[float, float, int]]) -> dict[str, float]:
        n = sum(c for _, _, c in parts)
        mean = sum(m * c for m, _, c in parts) / max(n, 1)
        square = sum((s * s + m * m) * c for m, s, c in parts) / max(n, 1)
        return {"mean": mean, "std": math.sqrt(max(square - mean * mean, 0.0)), "count": n}

    types = sorted({qt for r in results for qt in r.reward_by_type})
    by_type = {
        qt: pooled([(s["mean"], s["std"], int(s["count"])) for r in results if (s := r.reward_by_type.get(qt))])
        for qt in types
    }
    overall = pooled([(r.reward_mean, r.reward_std, n) for r, n in zip(results, counts, strict=True)])

    def weighted(values: Sequence[float], weights: Sequence[float]) -> float:
        return sum(v * w for v, w in zip(values, weights, strict=True)) / max(sum(weights), 1e-12)

    return GRPOStepResult(
        loss=float(np.mean([r.loss for r in results])),
        kl=weighted([r.kl for r in results], tokens),
        clip_fraction=float(np.mean([r.clip_fraction for r in results])),
        reward_mean=overall["mean"],
        reward_std=overall["std"],
        accuracy_mean=weighted([r.accuracy_mean for r in results], counts),
        format_mean=weighted([r.format_mean for r in results], counts),
        reward_by_type=by_type,
        mean_completion_tokens=sum(tokens) / max(samples, 1),
        degenerate_fraction=weighted([r.degenerate_fraction for r in results], [r.num_groups for r in results]),
        num_groups=groups,
        updated=any(r.updated for r in results),
        grad_norm=results[0].grad_norm,
    )
