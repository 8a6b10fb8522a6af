"""The one prompt builder, shared by data generation, training, evaluation and serving.

A prompt has three layers:

1. The question text in the official VSI-Bench form (``format_question``): pre-prompt, question,
   ``Options:`` with one option per line for multiple choice, and the answer instruction.
2. The user turn (``build_user_message``): the video placeholder ``<image>``, optionally the
   LLaVA-Video time line (how long the video lasts and where the sampled frames are), then the
   question text.
3. The chat rendering (``render_chatml``): Qwen2's ChatML with the system prompt; the assistant
   answer is returned separately so the training collator can mask everything else.

Training and evaluation use the same defaults (``PromptConfig()``); the reference trained with the
time line and evaluated without it, which this module makes impossible by accident.

Named forms (:data:`PROMPT_FORMS`, :func:`prompt_form`), each reproduced byte for byte:

- ``"ours"`` (the default): ``<image>``, our time line (``...6.00s. Please answer ... video.``),
  then the question text on the next line.
- ``"official-eval"``: what the official VSI-Bench/VSTI-Bench evaluation of VLM-3R sends (its
  lmms-eval model adds ``<image>\n`` before the task's text and no time line):
  ``<image>\nThese are frames of a video.\n...``. The converter stores this form by default.
- ``"official-train"``: what the official training rendered (``llava/train/train.py`` with
  ``add_time_instruction``): its time line has no space after the last timestamp
  (``...6.00s.Please answer ... video.``), and a blank line follows it, because the data files'
  ``<image>\n`` prefix loses its placeholder but keeps its newline:
  ``<image>\n<time line>\n\nThese are frames of a video.\n...``.

All three share the ChatML rendering (system prompt ``You are a helpful assistant.``), which is
the official ``qwen_1_5`` conversation template's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

VIDEO_PLACEHOLDER = "<image>"
SYSTEM_PROMPT = "You are a helpful assistant."
PRE_PROMPT = "These are frames of a video."
NUMERIC_POST_PROMPT = "Please answer the question using a single word or phrase."
MC_POST_PROMPT = "Answer with the option's letter from the given choices directly."

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
TIME_STYLES = ("ours", "official")


@dataclass(frozen=True)
class PromptConfig:
    """How prompts are built; stored with every trained model so serving and eval reuse it.

    Attributes:
        pre_prompt: first line of the question text.
        add_time_instruction: add the LLaVA-Video line with the video length and frame times.
        system_prompt: ChatML system message.
        time_style: how the time line is written: ``"ours"`` (``...6.00s. Please answer ...``, the
            question on the next line) or ``"official"`` (the official training's
            ``...6.00s.Please answer ...`` followed by a blank line).
    """

    pre_prompt: str = PRE_PROMPT
    add_time_instruction: bool = True
    system_prompt: str = SYSTEM_PROMPT
    time_style: Literal["ours", "official"] = "ours"

    def __post_init__(self):
        if VIDEO_PLACEHOLDER in self.pre_prompt or VIDEO_PLACEHOLDER in self.system_prompt:
            raise ValueError(f"the video placeholder {VIDEO_PLACEHOLDER!r} may only appear once, in the user turn")
        if self.time_style not in TIME_STYLES:
            raise ValueError(f"time_style must be one of {TIME_STYLES}, got {self.time_style!r}")

    @property
    def form(self) -> str:
        """The name of the form in :data:`PROMPT_FORMS` this config equals, else ``"custom"``."""
        return next((name for name, cfg in PROMPT_FORMS.items() if cfg == self), "custom")


PROMPT_FORMS: dict[str, PromptConfig] = {
    "ours": PromptConfig(),
    "official-eval": PromptConfig(add_time_instruction=False),
    "official-train": PromptConfig(time_style="official"),
}


def prompt_form(name: str) -> PromptConfig:
    """The ``PromptConfig`` of a named form (see the module docstring): ``"ours"``,
    ``"official-eval"`` or ``"official-train"``."""
    if name not in PROMPT_FORMS:
        raise ValueError(f"unknown prompt form {name!r}; choose one of {sorted(PROMPT_FORMS)}")
    return PROMPT_FORMS[name]


def format_question(question: str, options: Sequence[str] = (), pre_prompt: str = PRE_PROMPT) -> str:
    """The question text exactly as the official VSI-Bench/VSTI-Bench evaluation writes it.

    Args:
        question: the question sentence.
        options: multiple-choice options already lettered (``"A. chair"``); empty for numeric
            questions.
    """
    if VIDEO_PLACEHOLDER in question:
        raise ValueError(f"question must not contain {VIDEO_PLACEHOLDER!r}: {question!r}")
    if options:
        return "\n".join([pre_prompt, question, "Options:", *options, MC_POST_PROMPT])
    return "\n".join([pre_prompt, question, NUMERIC_POST_PROMPT])


def time_instruction(duration_s: float, timestamps: Sequence[float], style: str = "ours") -> str:
    """LLaVA-Video's time line for K frames sampled from a video of ``duration_s`` seconds.

    ``style="official"`` writes it as the official training did, without a space between the
    last timestamp's period and ``Please``.
    """
    times = ",".join(f"{t:.2f}s" for t in timestamps)
    gap = "" if style == "official" else " "
    return (
        f"The video lasts for {duration_s:.2f} seconds, and {len(timestamps)} frames are uniformly "
        f"sampled from it. These frames are located at {times}.{gap}"
        "Please answer the following questions related to this video."
    )


def build_user_message(
    question: str,
    options: Sequence[str] = (),
    *,
    timestamps: Sequence[float] | None = None,
    duration_s: float | None = None,
    config: PromptConfig = PromptConfig(),
) -> str:
    """The user turn: ``<image>`` placeholder, optional time line, question text.

    ``timestamps`` (seconds of the sampled frames) and ``duration_s`` are required when
    ``config.add_time_instruction`` is set. With the official time style a blank line follows the
    time line (see the module docstring).
    """
    parts = [VIDEO_PLACEHOLDER]
    if config.add_time_instruction:
        if timestamps is None or duration_s is None:
            raise ValueError("the time instruction needs the frame timestamps and the video duration")
        parts.append(time_instruction(duration_s, timestamps, config.time_style))
        if config.time_style == "official":
            parts.append("")
    parts.append(format_question(question, options, config.pre_prompt))
    return "\n".join(parts)


def answer_text(options: Sequence[str], ground_truth: str, mc_answer: str | None) -> str:
    """What the assistant should say: the option letter for multiple choice, else the value."""
    if options:
        if not mc_answer:
            raise ValueError(f"multiple-choice row without mc_answer (ground truth {ground_truth!r})")
        return mc_answer
    return str(ground_truth)


def build_conversation(user_message: str, answer: str) -> list[dict[str, str]]:
    """LLaVA conversation form: ``[{from: human, value}, {from: gpt, value}]``."""
    return [{"from": "human", "value": user_message}, {"from": "gpt", "value": answer}]


def render_chatml(user_message: str, answer: str | None = None, system_prompt: str = SYSTEM_PROMPT) -> tuple[str, str]:
    """Renders one exchange in Qwen2 ChatML.

    Returns:
        ``(prompt, completion)``: ``prompt`` ends with the assistant header, so generation starts
        right after it; ``completion`` is ``answer + "<|im_end|>"`` (empty when ``answer`` is None).
        Training supervises exactly the ``completion`` tokens.
    """
    if user_message.count(VIDEO_PLACEHOLDER) != 1:
        raise ValueError(
            f"the user message must contain {VIDEO_PLACEHOLDER!r} exactly once, "
            f"found {user_message.count(VIDEO_PLACEHOLDER)}"
        )
    prompt = (
        f"{IM_START}system\n{system_prompt}{IM_END}\n"
        f"{IM_START}user\n{user_message}{IM_END}\n"
        f"{IM_START}assistant\n"
    )
    completion = "" if answer is None else f"{answer}{IM_END}"
    return prompt, completion
