"""Answering questions about videos with a VLM-3R model, for batch evaluation.

:class:`AnswerQuestions` is a Ray Data stage written as a plain callable class (testable without
Ray): the constructor loads the model once, each call answers a batch of benchmark rows. Video
features come from precomputed token shards when a shard set is given, else the stage decodes
the videos and runs the frozen encoders itself. Prompts come from
:meth:`Vlm3rProcessor.user_message` (the model's own :class:`~vlm3r_core.prompting.PromptConfig`)
with the token row's or the decoded video's frame times, the call training makes, so evaluation
sees exactly what training saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from vlm3r_core.presets import PRESETS, get_preset
from vlm3r_core.tokens import iter_video_tokens, read_token_table
from vlm3r_core.video import read_video
from vlm3r_core.vlm import COMPONENTS, VideoFeatures, Vlm3rForConditionalGeneration, Vlm3rProcessor


def load_model(
    source: str, device: str | torch.device = "cpu", parts: Sequence[str] | None = None
) -> tuple[Vlm3rForConditionalGeneration, Vlm3rProcessor]:
    """Loads a preset name (seeded random weights, e.g. the untrained ``tiny``) or a ``save_pretrained`` URI.

    Args:
        device: where the model runs.
        parts: build only these components (e.g. ``("vision_tower", "cut3r")`` for a serving
            replica that only encodes; see ``from_config``); None builds the whole model.
    """
    components = COMPONENTS if parts is None else tuple(parts)
    if source in PRESETS:
        config = get_preset(source)
        model = Vlm3rForConditionalGeneration.from_config(config, components=components)
        processor = Vlm3rProcessor.from_config(config)
    else:
        model = Vlm3rForConditionalGeneration.from_pretrained(source, components=components)
        processor = Vlm3rProcessor.from_pretrained(source)
    return model.to(device).eval(), processor


@dataclass(frozen=True)
class _Video:
    """What a prompt needs from one video: its features and the times of the sampled frames."""

    vision_features: np.ndarray | torch.Tensor  # (T, P, Cv)
    camera_tokens: np.ndarray | torch.Tensor  # (T, 1, C)
    patch_tokens: np.ndarray | torch.Tensor  # (T, N, C)
    timestamps: Sequence[float]
    duration_s: float


class AnswerQuestions:
    """Answers a batch of benchmark rows (columns of :class:`vlm3r_core.evaluation.BenchmarkRow`).

    Returns columns ``id``, ``video_id``, ``prediction`` (raw model output or None) and ``error``
    (None, or why the row could not be answered: unreadable video, no token row, ...).
    """

    def __init__(self, model: str, tokens: str | None = None, device: str = "cpu", max_new_tokens: int = 16):
        self.device = torch.device(device)
        self.model, self.processor = load_model(model, self.device)
        self.tokens = tokens
        self.max_new_tokens = max_new_tokens

    def _videos_from_tokens(self, video_ids: list[str]) -> dict[str, _Video]:
        table = read_token_table(self.tokens, video_ids=video_ids)
        out = {}
        for vt in iter_video_tokens(table):
            if vt.vision_features is None:
                raise ValueError(f"{self.tokens}: shards hold no vision_features (precompute with --with-vision-features)")
            out[vt.video_id] = _Video(vt.vision_features, vt.camera_tokens, vt.patch_tokens, vt.timestamps.tolist(), vt.duration_s)
        return out

    def _video_from_file(self, uri: str) -> _Video:
        video = read_video(uri, num_samples=self.model.config.num_frames)
        feats = self.model.encode_frames(self.processor.preprocess_frames([video.frames]))
        return _Video(
            feats.vision_features[0].cpu(),
            feats.camera_tokens[0].cpu(),
            feats.patch_tokens[0].cpu(),
            video.timestamps.tolist(),
            video.duration_s,
        )

    def _load_videos(self, rows: list[dict]) -> tuple[dict[str, _Video], dict[str, str]]:
        """Features per video id, and the reason for every video that failed."""
        ids = sorted({r["video_id"] for r in rows})
        errors: dict[str, str] = {}
        if self.tokens:
            videos = self._videos_from_tokens(ids)
            errors = {i: f"no token row for {i} in {self.tokens}" for i in ids if i not in videos}
            return videos, errors
        videos = {}
        uri_of = {r["video_id"]: r["video"] for r in rows}
        for video_id in ids:
            try:
                videos[video_id] = self._video_from_file(uri_of[video_id])
            except (OSError, ValueError) as e:  # VideoDecodeError is a ValueError
                errors[video_id] = f"{type(e).__name__}: {e}"
        return videos, errors

    def answer(self, rows: list[dict]) -> list[tuple[str | None, str | None]]:
        """(prediction, error) per row; rows are dicts with BenchmarkRow fields and ``video_id``."""
        videos, errors = self._load_videos(rows)
        ok = [r for r in rows if r["video_id"] in videos]
        predictions: dict[str, str] = {}
        if ok:
            cfg = self.model.config
            messages = [
                self.processor.user_message(
                    r["question"],
                    r["options"],
                    timestamps=videos[r["video_id"]].timestamps,
                    duration_s=videos[r["video_id"]].duration_s,
                )
                for r in ok
            ]
            features = VideoFeatures.from_videos(
                [videos[r["video_id"]].vision_features for r in ok],
                [videos[r["video_id"]].camera_tokens for r in ok],
                [videos[r["video_id"]].patch_tokens for r in ok],
                dtype=cfg.torch_dtype,
            ).to(self.device)
            text = self.processor.build_batch(messages)
            ids = self.model.generate(
                input_ids=text.input_ids.to(self.device),
                attention_mask=text.attention_mask.to(self.device),
                features=features,
                max_new_tokens=self.max_new_tokens,
            )
            predictions = dict(zip((r["id"] for r in ok), self.processor.batch_decode(ids), strict=True))
        return [(predictions.get(r["id"]), errors.get(r["video_id"])) for r in rows]

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, list]:
        n = len(batch["id"])
        rows = [{k: batch[k][i] for k in batch} for i in range(n)]
        for r in rows:
            r["options"] = [] if r.get("options") is None else [str(o) for o in r["options"]]
            r["video_id"] = f"{r['dataset']}/{r['scene_name']}"
        results = self.answer(rows)
        return {
            "id": [str(r["id"]) for r in rows],
            "video_id": [r["video_id"] for r in rows],
            "prediction": [p for p, _ in results],
            "error": [e for _, e in results],
        }
