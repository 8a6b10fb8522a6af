"""Rollouts for GRPO: sampling G answers per prompt, and their teacher-forced log-probs.

Legend: ``B`` prompts, ``G`` samples per prompt, ``N = B * G`` completions in group-major order
(row ``b * G + g`` is sample ``g`` of prompt ``b``), ``n`` rows of a micro-batch, ``K``
completion tokens (padded), ``Lp`` prompt tokens, ``T`` frames, ``V`` vocabulary.

A completion is fed back to the model exactly as ``Vlm3rProcessor.build_batch(messages,
answers)`` lays out a supervised answer: the prompt's ids, then the completion's ids (up to and
including ``<|im_end|>``), labels on the completion only. The model's forward with labels
returns the logits of exactly those positions (``Vlm3rOutput.label_logits``), so no
(N, ~7k, V) logits tensor is ever built. Log-probs are of ``softmax(logits / temperature)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch

from vlm3r_core.rl.config import GRPOConfig
from vlm3r_core.vlm import VideoFeatures, Vlm3rForConditionalGeneration, Vlm3rOutput
from vlm3r_core.vlm.processor import IGNORE_INDEX, TextBatch


def completion_mask(completion_ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """(N, K) bool: the tokens of each completion up to and including its first ``eos_token_id``."""
    is_eos = (completion_ids == eos_token_id).long()
    return (is_eos.cumsum(dim=1) - is_eos) == 0  # no end token strictly before


def teacher_forced_batch(
    prompt: TextBatch, completion_ids: torch.Tensor, mask: torch.Tensor, pad_token_id: int
) -> TextBatch:
    """Prompt + completion rows laid out as ``Vlm3rProcessor.build_batch(messages, answers)`` does.

    Args:
        prompt: (N, Lp) right-padded prompt ids (``build_batch(messages)``).
        completion_ids, mask: (N, K) sampled tokens and :func:`completion_mask`.
        pad_token_id: fills the padding, as ``build_batch`` does.

    Returns:
        Right-padded ``TextBatch`` (N, L) whose labels supervise exactly the completion tokens.
    """
    rows, row_labels = [], []
    for b in range(prompt.input_ids.shape[0]):
        p = prompt.input_ids[b][prompt.attention_mask[b].bool()]
        c = completion_ids[b][mask[b]]
        rows.append(torch.cat([p, c]))
        row_labels.append(torch.cat([torch.full_like(p, IGNORE_INDEX), c]))
    length = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    for b, (ids, lab) in enumerate(zip(rows, row_labels, strict=True)):
        input_ids[b, : len(ids)] = ids
        attention_mask[b, : len(ids)] = 1
        labels[b, : len(lab)] = lab
    return TextBatch(input_ids, attention_mask, labels)


def select_prompts(
    prompt: TextBatch, features: VideoFeatures, index: torch.Tensor
) -> tuple[TextBatch, VideoFeatures]:
    """The prompts and videos at ``index`` (M,), e.g. ``arange(B).repeat_interleave(G)`` for the groups."""
    video_index = index.to(features.frame_mask.device)
    videos = VideoFeatures(
        features.vision_features[video_index],  # (M, T, P, Cv)
        features.camera_tokens[video_index],  # (M, T, 1, Cs)
        features.patch_tokens[video_index],  # (M, T, N, Cs)
        features.frame_mask[video_index],  # (M, T)
    )
    return TextBatch(prompt.input_ids[index], prompt.attention_mask[index]), videos  # (M, Lp)


def completion_logprobs(
    model: Vlm3rForConditionalGeneration,
    prompt: TextBatch,
    completion_ids: torch.Tensor,
    mask: torch.Tensor,
    features: VideoFeatures,
    temperature: float,
    forward: Callable[..., Vlm3rOutput] | None = None,
) -> torch.Tensor:
    """Log-probs of the completion tokens under ``softmax(logits / temperature)``, teacher-forced.

    One forward of ``model`` (``features=``, labels on the completion); gradients flow unless the
    caller disables them.

    Args:
        prompt: (n, Lp); completion_ids, mask: (n, K); features: n videos, one per row.
        forward: runs the forward instead of ``model`` (a DeepSpeed engine wrapping it, whose
            forward keeps ZeRO's gradient-accumulation bookkeeping).

    Returns:
        (n, K) float32, 0 outside ``mask``.
    """
    batch = teacher_forced_batch(prompt, completion_ids.cpu(), mask.cpu(), model.config.text["pad_token_id"])
    out = (forward or model)(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels, features=features
    )
    targets = completion_ids.to(out.label_logits.device)[mask.to(out.label_logits.device)]  # (m,)
    if out.label_logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"the forward scored {out.label_logits.shape[0]} tokens for {targets.shape[0]} completion tokens"
        )
    logp = torch.log_softmax(out.label_logits.float() / temperature, dim=-1)  # (m, V)
    token_logp = logp.gather(1, targets[:, None])[:, 0]  # (m,)
    dense = torch.zeros(mask.shape, dtype=torch.float32, device=token_logp.device)  # (n, K)
    return dense.masked_scatter(mask.to(token_logp.device), token_logp)


def chunk_indices(n: int, size: int) -> Iterator[torch.Tensor]:
    """Consecutive index ranges of at most ``size`` rows covering ``range(n)``."""
    for start in range(0, n, size):
        yield torch.arange(start, min(start + size, n))


def chunked_logprobs(
    model: Vlm3rForConditionalGeneration,
    prompt: TextBatch,
    completion_ids: torch.Tensor,
    mask: torch.Tensor,
    features: VideoFeatures,
    temperature: float,
    micro_batch_size: int,
) -> torch.Tensor:
    """:func:`completion_logprobs` without gradients, ``micro_batch_size`` rows per forward; (n, K)."""
    parts = []
    with torch.no_grad():
        for idx in chunk_indices(completion_ids.shape[0], micro_batch_size):
            rows, videos = select_prompts(prompt, features, idx)
            parts.append(
                completion_logprobs(model, rows, completion_ids[idx], mask[idx], videos, temperature)
            )
    return torch.cat(parts)


# Backends --------------------------------------------------------------------------------------------------


@dataclass
class Rollouts:
    """G sampled completions per prompt, group-major.

    Attributes:
        completion_ids: (N, K) int64; anything after a completion's end token is padding.
        mask: (N, K) bool, the completion tokens (up to and including ``<|im_end|>``).
        logprobs: (N, K) float32, log-probs of the tokens under the sampling policy
            (``softmax(logits / temperature)``), 0 outside ``mask``.
    """

    completion_ids: torch.Tensor
    mask: torch.Tensor
    logprobs: torch.Tensor


class RolloutBackend(Protocol):
    """Samples completions; an inference engine can replace :class:`HFRolloutBackend` without
    touching the loss, as long as it returns the tokens and their log-probs."""

    def sample(self, prompt: TextBatch, features: VideoFeatures, config: GRPOConfig) -> Rollouts:
        """``config.group_size`` completions of each of the B prompts ((B, Lp), B videos)."""
        ...


class HFRolloutBackend:
    """Rollouts with ``Vlm3rForConditionalGeneration.generate`` (temperature, top-p sampling).

    The log-probs come from a teacher-forced forward of the same model (the policy that sampled),
    ``config.micro_batch_size`` completions at a time.

    Args:
        model: the policy.
        gathered: a context in which generation runs, e.g. ZeRO-3's gathering of the partitioned
            weights (``DeepSpeedPolicyUpdate.gathered_parameters``); none by default.
    """

    def __init__(
        self,
        model: Vlm3rForConditionalGeneration,
        gathered: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ):
        self.model = model
        self.gathered = gathered

    def sample(self, prompt: TextBatch, features: VideoFeatures, config: GRPOConfig) -> Rollouts:
        g = config.group_size
        index = torch.arange(prompt.input_ids.shape[0]).repeat_interleave(g)  # (N,)
        prompts, videos = select_prompts(prompt, features, index)
        with self.gathered():
            ids = self.model.generate(
                prompts.input_ids,
                prompts.attention_mask,
                features=videos,
                max_new_tokens=config.max_new_tokens,
                do_sample=True,
                temperature=config.temperature,
                top_p=config.top_p,
            ).cpu()  # (N, K)
        mask = completion_mask(ids, self.model.config.text["eos_token_id"])
        logprobs = chunked_logprobs(
            self.model, prompts, ids, mask, videos, config.temperature, config.micro_batch_size
        )
        return Rollouts(completion_ids=ids, mask=mask, logprobs=logprobs.cpu())
