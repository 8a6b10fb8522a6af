"""Rewards of reinforcement tuning (GRPO, :mod:`vlm3r_core.rl`): which rows can be scored, and how.

A benchmark row (VSI-Bench field names: ``id, question_type, question, options, ground_truth,
mc_answer``) becomes an :class:`RLExample` with the user turn of the one prompt builder. A sampled
answer earns

    reward = accuracy + format_weight * format

- accuracy: :func:`vlm3r_core.metrics.score_official`, the very function evaluation scores with
  (case-insensitive exact match of the first token with the answer letter for multiple choice;
  mean relative accuracy over the thresholds 0.50 ... 0.95 for numbers), in [0, 1];
- format, 0 or 1: the official parser finds a letter of the row's options (multiple choice) or a
  finite number (numeric questions).

Answer forms: ``"plain"`` scores the whole answer as above. ``"think"`` asks for
``<think>reasoning</think><answer>final answer</answer>`` (the instruction replaces the last line of
the question text); format is 1 only for exactly that structure, with both parts non-empty and a
parsable final answer, and accuracy scores only the text inside ``<answer>`` (0 without the tags).

A row without a computable reward (unknown question type, no ground truth, a multiple-choice
row whose answer letter is not one of its options, a numeric ground truth that is not a positive
number) is skipped with the reason (:func:`reward_skip_reason`, :func:`plan_rl_rows`), never scored 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vlm3r_core.metrics import (
    is_multiple_choice_question,
    is_numeric_question,
    official_parse,
    score_official,
)
from vlm3r_core.prompting import MC_POST_PROMPT, NUMERIC_POST_PROMPT
from vlm3r_core.vlm import Vlm3rProcessor

ANSWER_FORMS = ("plain", "think")
THINK_INSTRUCTION = (
    "First think about the question inside <think> </think>, then write only the final answer "
    "(the option's letter, or a single number) inside <answer> </answer>."
)
_THINK = re.compile(r"\s*<think>(.*?)</think>\s*<answer>(.*?)</answer>\s*", re.DOTALL)


@dataclass(frozen=True)
class RLExample:
    """One question to sample answers for, with what its reward needs.

    Attributes:
        user_message: the user turn from ``Vlm3rProcessor.user_message`` (``<image>`` once).
        options: lettered options (``"A. chair"``), empty for numeric questions.
        mc_answer: the answer letter of a multiple-choice row (VSTI-Bench form), else None.
    """

    id: str
    question_type: str
    user_message: str
    options: tuple[str, ...]
    ground_truth: str
    mc_answer: str | None


def option_letters(options: Sequence[str]) -> list[str]:
    """``["A. chair", "B. table"]`` -> ``["A", "B"]``."""
    return [str(o).split(".", 1)[0].strip().upper() for o in options]


def _options(row: Mapping) -> tuple[str, ...]:
    """The row's options (a list, a numpy array from a Ray Data batch, or None)."""
    options = row.get("options")
    return () if options is None else tuple(str(o) for o in options)


def reward_skip_reason(row: Mapping) -> str | None:
    """Why ``row`` has no computable reward, or None when it has one."""
    qt = row.get("question_type")
    if not qt:
        return "no question_type"
    numeric, choice = is_numeric_question(qt), is_multiple_choice_question(qt)
    if not (numeric or choice):
        return f"unknown question_type {qt!r}: the scorer has no numeric or multiple-choice rule for it"
    if not str(row.get("question") or "").strip():
        return "no question text"
    gt = row.get("ground_truth")
    if gt is None or not str(gt).strip():
        return "no ground_truth"
    options = _options(row)
    if numeric:
        if options:
            return f"numeric question_type {qt!r} with options"
        try:
            value = float(gt)
        except (TypeError, ValueError):
            return f"numeric ground_truth {gt!r} is not a number"
        if not (math.isfinite(value) and value > 0):
            return (
                f"numeric ground_truth {gt!r} is not a positive number (mean relative accuracy divides by it)"
            )
        return None
    if not options:
        return f"multiple-choice question_type {qt!r} without options"
    target = row.get("mc_answer") or gt
    if str(target).strip().upper() not in option_letters(options):
        return f"answer {target!r} (mc_answer, else ground_truth) is not the letter of one of the options"
    return None


def plan_rl_rows(rows: Sequence[Mapping]) -> tuple[list[Mapping], list[dict]]:
    """Splits benchmark rows into those with a computable reward and the others as ``{id, reason}``."""
    kept, skipped = [], []
    for n, row in enumerate(rows):
        reason = reward_skip_reason(row)
        if reason is None:
            kept.append(row)
        else:
            skipped.append({"id": str(row.get("id", n)), "reason": reason})
    return kept, skipped


def build_rl_example(
    row: Mapping,
    timestamps: Sequence[float] | None,
    duration_s: float | None,
    processor: Vlm3rProcessor,
    answer_form: str = "plain",
) -> RLExample:
    """The example of a benchmark row, its user turn rendered as training, evaluation and serving
    render theirs (:meth:`Vlm3rProcessor.user_message`, the model's ``PromptConfig``).

    Args:
        timestamps, duration_s: seconds of the sampled frames and the video length (the token
            shard's), for the prompt's time line.
        processor: the policy's processor.

    Raises:
        ValueError: the row has no computable reward (the message is :func:`reward_skip_reason`).
    """
    reason = reward_skip_reason(row)
    if reason is not None:
        raise ValueError(f"row {row.get('id')!r}: {reason}")
    if answer_form not in ANSWER_FORMS:
        raise ValueError(f"answer_form must be one of {ANSWER_FORMS}, got {answer_form!r}")
    options = _options(row)
    message = processor.user_message(str(row["question"]), options, timestamps=timestamps, duration_s=duration_s)
    if answer_form == "think":
        head, last = message.rsplit("\n", 1)
        if last not in (MC_POST_PROMPT, NUMERIC_POST_PROMPT):
            raise ValueError(f"the question text does not end with an answer instruction: {last!r}")
        message = f"{head}\n{THINK_INSTRUCTION}"
    return RLExample(
        id=str(row.get("id")),
        question_type=str(row["question_type"]),
        user_message=message,
        options=options,
        ground_truth=str(row["ground_truth"]),
        mc_answer=row.get("mc_answer") or None,
    )


@dataclass(frozen=True)
class RewardParts:
    """The reward of one answer: ``total = accuracy + format_weight * format``."""

    accuracy: float
    format: float
    total: float


def is_parsable(example: RLExample, answer: str) -> bool:
    """The official parser finds one of the option letters, or a finite number for numeric questions."""
    parsed = official_parse(answer)
    if example.options:
        return parsed.upper() in option_letters(example.options)
    try:
        return math.isfinite(float(parsed))
    except ValueError:
        return False


def score_completion(example: RLExample, text: str, answer_form: str, format_weight: float) -> RewardParts:
    """Reward of one decoded answer (``processor.batch_decode``), see the module docstring."""
    if answer_form == "think":
        m = _THINK.fullmatch(text)
        if m is None:
            return RewardParts(accuracy=0.0, format=0.0, total=0.0)
        thought, answer = m.group(1).strip(), m.group(2).strip()
        well_formed = bool(thought) and is_parsable(example, answer)
    else:
        answer = text
        well_formed = is_parsable(example, answer)
    accuracy = score_official(example.question_type, answer, example.ground_truth, example.mc_answer)
    fmt = 1.0 if well_formed else 0.0
    return RewardParts(accuracy=accuracy, format=fmt, total=accuracy + format_weight * fmt)
