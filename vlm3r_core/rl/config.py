"""Settings of GRPO (:mod:`vlm3r_core.rl`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from vlm3r_core.rl.rewards import ANSWER_FORMS


@dataclass(frozen=True)
class GRPOConfig:
    """Settings of GRPO.

    Args:
        group_size: G, completions sampled per prompt (>= 2: advantages compare within a group).
        temperature: sampling temperature; also divides the logits of every log-prob of the loss.
        top_p: nucleus sampling (1.0: off).
        max_new_tokens: longest completion; one without ``<|im_end|>`` by then is cut there.
        clip_eps: PPO clip range of the policy ratio, ``[1 - clip_eps, 1 + clip_eps]``.
        kl_beta: weight of the k3 KL penalty to the reference policy (0: no penalty, still reported).
        format_weight: weight of the format reward added to the accuracy reward.
        answer_form: ``"plain"`` (the benchmark's answer: a letter or a number) or ``"think"``
            (``<think>...</think><answer>...</answer>``, the instruction replaces the last line of
            the prompt).
        advantage_eps: added to the group std before dividing.
        micro_batch_size: completions per forward pass (teacher-forced log-probs and the loss).
        lr: AdamW learning rate (:func:`torch_policy_update`).
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping by global norm.

    The last four are not flags of the training job (``jobs/train.py --method grpo``): there
    ``TrainConfig`` sets them (``--lr``, ``--weight-decay``, ``--max-grad-norm``, and
    ``--micro-batch-size`` prompts, so ``micro_batch_size * group_size`` completions, per forward).
    """

    group_size: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    clip_eps: float = 0.2
    kl_beta: float = 0.04
    format_weight: float = 0.5
    answer_form: Literal["plain", "think"] = "plain"
    advantage_eps: float = 1e-4
    micro_batch_size: int = field(default=8, metadata={"cli": False})
    lr: float = field(default=1e-5, metadata={"cli": False})
    weight_decay: float = field(default=0.0, metadata={"cli": False})
    max_grad_norm: float = field(default=1.0, metadata={"cli": False})

    def __post_init__(self):
        if self.group_size < 2:
            raise ValueError(
                f"group_size must be >= 2 (advantages compare samples of a group), got {self.group_size}"
            )
        if self.max_new_tokens < 1 or self.micro_batch_size < 1:
            raise ValueError("max_new_tokens and micro_batch_size must be >= 1")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError(f"need temperature > 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}")
        if not 0 < self.clip_eps < 1:
            raise ValueError(f"clip_eps must be in (0, 1), got {self.clip_eps}")
        if min(self.kl_beta, self.format_weight, self.weight_decay) < 0:
            raise ValueError("kl_beta, format_weight and weight_decay must be >= 0")
        if self.answer_form not in ANSWER_FORMS:
            raise ValueError(f"answer_form must be one of {ANSWER_FORMS}, got {self.answer_form!r}")
        if not (self.advantage_eps > 0 and self.lr > 0 and self.max_grad_norm > 0):
            raise ValueError("advantage_eps, lr and max_grad_norm must be > 0")
