"""Reinforcement tuning of VLM-3R with GRPO (group relative policy optimisation): the library core.

Modules: :mod:`~vlm3r_core.rl.config` (``GRPOConfig``), :mod:`~vlm3r_core.rl.rewards` (which rows
can be scored, the reward), :mod:`~vlm3r_core.rl.rollout` (sampling and teacher-forced
log-probs), :mod:`~vlm3r_core.rl.grpo` (advantages, the loss, the policy and its update, the
step). No Ray: ``jobs/`` distributes it.

Legend: ``B`` prompts, ``G`` samples per prompt (a group), ``N = B * G`` completions in
group-major order (row ``b * G + g`` is sample ``g`` of prompt ``b``), ``K`` completion tokens
(padded), ``Lp`` prompt tokens, ``V`` vocabulary.

One step (:func:`grpo_step` = :func:`collect_rollouts` then :func:`update_policy`):

1. Rollouts. A :class:`RolloutBackend` samples G completions per prompt and returns their token
   log-probs under the sampling policy (:class:`HFRolloutBackend`: ``model.generate`` with
   temperature / top-p, log-probs by a teacher-forced forward). Prompts are rendered by the one
   prompt builder (``Vlm3rProcessor.user_message``, the model's ``PromptConfig``) and tokenised by
   ``Vlm3rProcessor.build_batch``; a completion is fed back exactly as ``build_batch`` lays out an
   answer (prompt ids, then the completion ids, supervised).
2. Rewards (:mod:`vlm3r_core.rl.rewards`): ``reward = accuracy + format_weight * format``, where
   accuracy is the official per-question score of :mod:`vlm3r_core.metrics` (exact match of the
   letter for multiple choice, mean relative accuracy for numbers) and format is 1 for a parsable
   letter / number (and, for the ``"think"`` form, ``<think>...</think><answer>...</answer>``).
3. Advantages, per group: ``A = (r - mean(r)) / (std(r) + eps)`` with the population std.
   A group whose rewards are all equal is degenerate: it carries no signal, its tokens get weight
   0 (no loss, no KL) and it is counted in ``degenerate_fraction``.
4. Loss, per completion token t of a non-degenerate sequence, with ``logp`` the current policy,
   ``old`` the rollout's and ``ref`` the reference policy's log-prob of the sampled token:

       ratio = exp(logp - old)
       pg    = -min(ratio * A, clip(ratio, 1 - clip_eps, 1 + clip_eps) * A)
       kl    = exp(ref - logp) - (ref - logp) - 1          (k3, unbiased estimate of KL(pi || ref))
       loss  = sum_t (pg + kl_beta * kl) / (number of completion tokens of non-degenerate groups)

   a token-level mean over the whole step (every token weighs the same, whatever the length of
   its completion). Log-ratios are clamped to +-20 only to keep ``exp`` finite.

The policy is ``softmax(logits / temperature)``: rollout, current and reference log-probs all use
the sampling temperature (top-p truncation is a sampling detail the loss does not model). The
reference policy is the same model with its LoRA adapter disabled (``PeftModel.disable_adapter``),
no second copy of the weights: :func:`prepare_policy` merges the supervised LoRA into the LLM,
freezes fusion, projector and newline and applies a fresh adapter, so the reference is exactly the
model GRPO started from. Dropout is off during a step (the ratio and the KL compare deterministic
policies). The forward with gradients, the backward pass and the optimiser step are injected
(:class:`PolicyUpdate`: plain torch or a DeepSpeed engine, ZeRO-2 or ZeRO-3), so the same step
runs in a test and in a Ray Train worker. A step whose groups are all degenerate updates nothing;
data-parallel ranks decide that together (:func:`signal_on_any_rank`), and
:func:`merge_step_results` pools their metrics.
"""

from vlm3r_core.rl.config import GRPOConfig
from vlm3r_core.rl.grpo import (
    DeepSpeedPolicyUpdate,
    GRPOStepResult,
    PolicyUpdate,
    RolloutBatch,
    TorchPolicyUpdate,
    collect_rollouts,
    group_advantages,
    grpo_loss,
    grpo_step,
    merge_step_results,
    prepare_policy,
    reference_policy,
    signal_on_any_rank,
    torch_policy_update,
    update_policy,
)
from vlm3r_core.rl.rewards import (
    RewardParts,
    RLExample,
    build_rl_example,
    plan_rl_rows,
    reward_skip_reason,
    score_completion,
)
from vlm3r_core.rl.rollout import HFRolloutBackend, RolloutBackend, Rollouts, completion_logprobs

__all__ = [
    "DeepSpeedPolicyUpdate", "GRPOConfig", "GRPOStepResult", "HFRolloutBackend", "PolicyUpdate", "RLExample",
    "RewardParts", "RolloutBackend", "RolloutBatch", "Rollouts", "TorchPolicyUpdate", "build_rl_example",
    "collect_rollouts", "completion_logprobs", "group_advantages", "grpo_loss", "grpo_step", "merge_step_results",
    "plan_rl_rows", "prepare_policy", "reference_policy", "reward_skip_reason", "score_completion",
    "signal_on_any_rank", "torch_policy_update", "update_policy",
]  # fmt: skip
