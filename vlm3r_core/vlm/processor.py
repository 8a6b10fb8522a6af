"""The processor of the VLM: frames -> encoder pixels, prompts -> padded token batches, ids -> text.

Legend: ``B`` videos, ``T`` frames (padded to the longest video; ``frame_mask`` marks real
frames), ``S`` SigLIP input side (384), ``G`` CUT3R input side (432), ``L`` tokens.

Frames are squash-resized to squares (aspect ratio not kept, as SigLIP's image processor does in
LLaVA-Video) with ``torch.nn.functional.interpolate`` (bicubic, antialiased) and normalised with
mean = std = 0.5 into [-1, 1]. Both encoders see the original frame resized to their own size (the
reference up-sampled SigLIP's 384 px tensor to 432 px for CUT3R instead).

Prompts come from the one prompt builder (``vlm3r_core.prompting``): ``user_message`` writes the
user turn of a question about a video with the model's ``PromptConfig`` (the one call training,
evaluation and serving make), ``build_batch`` renders each user message with ``render_chatml`` and
supervises only the completion (answer + ``<|im_end|>``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from vlm3r_core import prompting, storage
from vlm3r_core.vlm.checkpoint import TOKENIZER_DIR, read_saved_config, saved_tokenizer, upload_folder
from vlm3r_core.vlm.config import Vlm3rConfig
from vlm3r_core.vlm.tokenizer import load_tokenizer

__all__ = ["FramePixels", "TextBatch", "Vlm3rProcessor", "IGNORE_INDEX"]

IGNORE_INDEX = -100
INPUT_ONLY_TOKENS = (prompting.VIDEO_PLACEHOLDER, "<video>")  # placeholders, never generated


@dataclass
class FramePixels:
    """Encoder inputs of a batch of videos.

    Attributes:
        siglip: (B, T, 3, S, S) float in [-1, 1]; None when only CUT3R runs.
        cut3r: (B, T, 3, G, G) float in [-1, 1].
        frame_mask: (B, T) bool, True for real frames (padding frames are zeros).
    """

    siglip: torch.Tensor | None
    cut3r: torch.Tensor
    frame_mask: torch.Tensor

    def to(self, device=None, dtype=None) -> FramePixels:
        return FramePixels(
            None if self.siglip is None else self.siglip.to(device, dtype),
            self.cut3r.to(device, dtype),
            self.frame_mask.to(device),
        )


@dataclass
class TextBatch:
    """Tokenised prompts, right-padded; each row holds the video placeholder exactly once.

    Attributes:
        input_ids: (B, L) int64.
        attention_mask: (B, L) int64, 1 for real tokens.
        labels: (B, L) int64, the completion tokens and ``IGNORE_INDEX`` elsewhere; None when
            no answers were given (generation).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None = None


def resize_frames(frames: torch.Tensor, size: int) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (T, 3, size, size) float in [-1, 1] (bicubic, antialiased)."""
    x = frames.permute(0, 3, 1, 2).float() / 255.0  # (T, 3, H, W)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)  # bicubic overshoots at edges
    return (x - 0.5) / 0.5


class Vlm3rProcessor:
    """Tokenizer plus frame preprocessing for one model configuration.

    Args:
        config: the model configuration (image sizes, frame count, prompt settings).
        tokenizer: a Hugging Face tokenizer with ``<image>`` and ``<|im_end|>`` as single tokens.
    """

    def __init__(self, config: Vlm3rConfig, tokenizer):
        self.config = config
        self.tokenizer = tokenizer
        self.placeholder_id = tokenizer.convert_tokens_to_ids(prompting.VIDEO_PLACEHOLDER)
        self.eos_token_id = tokenizer.convert_tokens_to_ids(prompting.IM_END)
        self.pad_token_id = tokenizer.pad_token_id
        expected = (config.image_token_id, config.text["eos_token_id"], config.text["pad_token_id"])
        if (self.placeholder_id, self.eos_token_id, self.pad_token_id) != expected:
            raise ValueError(
                f"tokenizer ids (<image>, <|im_end|>, pad) = {(self.placeholder_id, self.eos_token_id, self.pad_token_id)} "
                f"do not match the config {expected}"
            )
        vocab = tokenizer.get_vocab()
        self.input_only_ids = tuple(vocab[t] for t in INPUT_ONLY_TOKENS if t in vocab)

    @property
    def vocab_size(self) -> int:
        """The ids the tokenizer has (``len(tokenizer)``); the LLM's LM head may have more rows
        (Qwen2's padding), which generation never picks."""
        return len(self.tokenizer)

    @classmethod
    def from_config(cls, config: Vlm3rConfig) -> Vlm3rProcessor:
        return cls(config, load_tokenizer(config.tokenizer))

    @classmethod
    def from_pretrained(cls, uri: str) -> Vlm3rProcessor:
        """Loads the processor of a model saved with ``Vlm3rForConditionalGeneration.save_pretrained``."""
        config = read_saved_config(uri)
        return cls(config, saved_tokenizer(uri, config))

    def save_pretrained(self, uri: str) -> None:
        """Writes the tokenizer files under ``<uri>/tokenizer/`` (the model's saved layout)."""
        upload_folder(self.tokenizer.save_pretrained, storage.join(uri, TOKENIZER_DIR))

    # Frames ----------------------------------------------------------------------------------------

    def preprocess_frames(self, videos: Sequence[np.ndarray | torch.Tensor], vision: bool = True) -> FramePixels:
        """:func:`frame_pixels` at this model's encoder sizes (``vision=False``: CUT3R only)."""
        return frame_pixels(videos, self.config.cut3r_image_size, self.config.siglip_image_size if vision else None)

    # Text ------------------------------------------------------------------------------------------

    def user_message(
        self, question: str, options: Sequence[str] = (), *, timestamps: Sequence[float], duration_s: float
    ) -> str:
        """The user turn of a question about a video, with this model's ``PromptConfig``.

        Training, evaluation and serving all build their prompts here, so a model sees the same
        text in all three.

        Args:
            question: the question sentence.
            options: multiple-choice options already lettered (``"A. chair"``); empty for numeric.
            timestamps: seconds of the video's sampled frames (a token row's ``timestamps`` or a
                decoded video's), for the time line.
            duration_s: length of the video in seconds.

        A blind question (no frames, ``timestamps`` empty) gets no time line.
        """
        config = self.config.prompt
        if not timestamps:
            config = dataclasses.replace(config, add_time_instruction=False)
        return prompting.build_user_message(question, options, timestamps=timestamps, duration_s=duration_s, config=config)

    def build_batch(self, user_messages: Sequence[str], answers: Sequence[str] | None = None) -> TextBatch:
        """Tokenises user turns (from ``prompting.build_user_message``) into a right-padded batch.

        Args:
            user_messages: B user turns, each with the ``<image>`` placeholder exactly once.
            answers: B assistant answers (training: labels supervise only them) or None (generation:
                the prompt ends with the assistant header).
        """
        if answers is not None and len(answers) != len(user_messages):
            raise ValueError(f"build_batch got {len(user_messages)} messages but {len(answers)} answers")
        rows, row_labels = [], []
        for i, message in enumerate(user_messages):
            prompt, completion = prompting.render_chatml(
                message, None if answers is None else answers[i], self.config.prompt.system_prompt
            )
            prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=False)
            completion_ids = self.tokenizer.encode(completion, add_special_tokens=False) if completion else []
            if prompt_ids.count(self.placeholder_id) != 1:
                raise ValueError(
                    f"message {i}: the prompt must tokenize to exactly one {prompting.VIDEO_PLACEHOLDER!r} token"
                )
            rows.append(prompt_ids + completion_ids)
            row_labels.append([IGNORE_INDEX] * len(prompt_ids) + completion_ids)
        length = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        labels = torch.full((len(rows), length), IGNORE_INDEX, dtype=torch.long)
        for b, (ids, lab) in enumerate(zip(rows, row_labels, strict=True)):
            input_ids[b, : len(ids)] = torch.tensor(ids)
            attention_mask[b, : len(ids)] = 1
            labels[b, : len(lab)] = torch.tensor(lab)
        return TextBatch(input_ids, attention_mask, labels if answers is not None else None)

    def batch_decode(self, ids: torch.Tensor) -> list[str]:
        """Generated ids (B, L_new) -> answers, special tokens and surrounding spaces removed."""
        return [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def frame_pixels(
    videos: Sequence[np.ndarray | torch.Tensor], cut3r_size: int, siglip_size: int | None
) -> FramePixels:
    """Turns sampled frames of B videos into encoder pixels, padded to the longest video.

    Frames are squash-resized to the encoders' square inputs (:func:`resize_frames`) and
    normalised with mean = std = 0.5.

    Args:
        videos: B arrays (T_b, H, W, 3) uint8 RGB (``vlm3r_core.video.read_video(...).frames``).
        cut3r_size: G, CUT3R's input side.
        siglip_size: S, SigLIP's input side; None skips SigLIP (``siglip`` None).

    Returns:
        ``FramePixels`` with T = max T_b and ``frame_mask`` marking the real frames.
    """
    if not videos:
        raise ValueError("frame_pixels needs at least one video")
    frames = []
    for i, video in enumerate(videos):
        if not isinstance(video, torch.Tensor):  # read-only arrays (Ray Data batches) are copied
            video = np.asarray(video)
            video = torch.from_numpy(video) if video.flags.writeable else torch.tensor(video)
        if video.dtype != torch.uint8 or video.ndim != 4 or video.shape[-1] != 3 or video.shape[0] == 0:
            raise ValueError(
                f"video {i}: expected (T, H, W, 3) uint8 frames with T >= 1, got {tuple(video.shape)} {video.dtype}"
            )
        frames.append(video)
    t_max = max(v.shape[0] for v in frames)
    siglip = None if siglip_size is None else torch.zeros(len(frames), t_max, 3, siglip_size, siglip_size)
    cut3r = torch.zeros(len(frames), t_max, 3, cut3r_size, cut3r_size)
    mask = torch.zeros(len(frames), t_max, dtype=torch.bool)
    for b, video in enumerate(frames):
        t = video.shape[0]
        if siglip is not None:
            siglip[b, :t] = resize_frames(video, siglip_size)
        cut3r[b, :t] = resize_frames(video, cut3r_size)
        mask[b, :t] = True
    return FramePixels(siglip=siglip, cut3r=cut3r, frame_mask=mask)
