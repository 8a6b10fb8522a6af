"""Answering questions about videos with a VLM-3R model: the one generation path.

- :func:`load_model`: a preset name (seeded random weights) or a saved model folder, in its
  config's dtype or another one (bf16, fp16, fp32).
- :class:`VideoContext`: what a prompt needs from one video (its encoder features, the times of
  the sampled frames, its length), from token shards (:func:`contexts_from_tokens`), from the
  raw video (:func:`context_from_video`, through the model's one encoder path ``encode_frames``),
  or no video at all (:func:`blind_context`: a text-only run; the prompt's placeholder then
  stands for zero video tokens and the time line is left out), or through the live-session path
  (:func:`online_contexts`: the sampled frames pushed one by one into a
  :class:`vlm3r_core.live.LiveSession`, read after all of them and at fractions of the video).
- :func:`generation_inputs`: questions + their videos -> the chat text batch, the padded video
  features and the prompt length as the LLM sees it, with the user turn built by
  :meth:`Vlm3rProcessor.user_message` (the model's own ``PromptConfig``), the call training makes.
  Batch evaluation (:class:`AnswerQuestions`) and the serving ``LanguageModel`` both call it, so
  an answer does not depend on where the question was asked. :func:`generate` never picks an id
  the tokenizer does not have (the LM head's padding rows) nor the video placeholder.
  :func:`prompt_length` gives the same length from the frame times alone (no features), for admission checks before decoding.
- :class:`AnswerQuestions`: a Ray Data stage written as a plain callable class (testable without
  Ray): the constructor loads the model once, each call answers a batch of benchmark rows; a row
  that cannot be answered (unreadable video, missing token row, a prompt that does not fit)
  fails alone with its reason, the rest of its batch is answered.

Shapes: ``B`` questions, ``T`` frames, ``P`` SigLIP tokens, ``N`` CUT3R patches, ``Cv``/``C``
widths, ``L`` text tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList

from vlm3r_core.ledger import error_reason
from vlm3r_core.live import KeyframePolicy, LiveSession
from vlm3r_core.presets import PRESETS, get_preset
from vlm3r_core.tokens import iter_video_tokens, read_token_table
from vlm3r_core.video import read_video
from vlm3r_core.vlm import COMPONENTS, TextBatch, VideoFeatures, Vlm3rForConditionalGeneration, Vlm3rProcessor
from vlm3r_core.vlm.config import DTYPES


def load_model(
    source: str,
    device: str | torch.device = "cpu",
    parts: Sequence[str] | None = None,
    dtype: str | None = None,
    cut3r_point_heads: bool = False,
) -> tuple[Vlm3rForConditionalGeneration, Vlm3rProcessor]:
    """Loads a preset name (seeded random weights, e.g. the untrained ``tiny``) or a ``save_pretrained`` URI.

    Args:
        device: where the model runs.
        parts: build only these components (e.g. ``("vision_tower", "cut3r")`` for a serving
            replica that only encodes; see ``from_config``); None builds the whole model.
        dtype: run in this dtype ("float32", "bfloat16", "float16") instead of the config's; the
            model's config then says so, so encoders, features and the LLM all use it.
        cut3r_point_heads: build CUT3R with its point heads (3D exports of live sessions), see
            ``Vlm3rForConditionalGeneration.from_pretrained``.
    """
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    components = COMPONENTS if parts is None else tuple(parts)
    if source in PRESETS:
        config = get_preset(source)
        if cut3r_point_heads:
            config = config.with_cut3r_point_heads()
        model = Vlm3rForConditionalGeneration.from_config(config, components=components)
        processor = Vlm3rProcessor.from_config(config)
    else:
        model = Vlm3rForConditionalGeneration.from_pretrained(
            source, components=components, cut3r_point_heads=cut3r_point_heads
        )
        processor = Vlm3rProcessor.from_pretrained(source)
    if dtype is not None and dtype != model.config.dtype:
        model.config = model.config.replace(dtype=dtype)
        model.to(DTYPES[dtype])
    return model.to(device).eval(), processor


def load_processor(source: str) -> Vlm3rProcessor:
    """The processor (config and tokenizer) of a preset name or a ``save_pretrained`` URI, without weights."""
    return Vlm3rProcessor.from_config(get_preset(source)) if source in PRESETS else Vlm3rProcessor.from_pretrained(source)


@dataclass(frozen=True)
class VideoContext:
    """What a prompt needs from one video.

    Attributes:
        features: the video's encoder outputs, (1, T, ...) (``vision_features`` required).
        timestamps: (T,) seconds of the sampled frames.
        duration_s: length of the video in seconds.
    """

    features: VideoFeatures
    timestamps: tuple[float, ...]
    duration_s: float


@dataclass(frozen=True)
class Question:
    """One question: its text and lettered options (``"A. chair"``; empty for numeric answers)."""

    question: str
    options: tuple[str, ...] = ()


@dataclass
class GenerationInputs:
    """Model inputs for a batch of questions.

    Attributes:
        text: the chat text, right-padded (``input_ids`` (B, L), ``attention_mask`` (B, L)).
        features: the videos' features padded over frames, (B, T, ...), with ``frame_mask``.
        prompt_tokens: per question, the prompt length the LLM sees (the ``<image>`` placeholder
            replaced by the video's tokens).
        vocab_size: the ids the tokenizer has; generation never picks one past it.
        suppress_ids: input-only ids (video placeholders) generation never picks.
    """

    text: TextBatch
    features: VideoFeatures
    prompt_tokens: list[int]
    vocab_size: int | None = None
    suppress_ids: tuple[int, ...] = ()


def generation_inputs(
    model: Vlm3rForConditionalGeneration,
    processor: Vlm3rProcessor,
    questions: Sequence[Question],
    videos: Sequence[VideoContext],
) -> GenerationInputs:
    """Builds the prompts (the model's ``PromptConfig``, the videos' frame times) and batches them.

    Raises:
        ValueError: a video without SigLIP features, or a prompt the model cannot take (its
            message names the question).
    """
    if len(questions) != len(videos) or not questions:
        raise ValueError(f"generation_inputs needs as many videos as questions (>= 1), got {len(questions)}, {len(videos)}")
    config = model.config
    messages = [
        processor.user_message(q.question, q.options, timestamps=v.timestamps, duration_s=v.duration_s)
        for q, v in zip(questions, videos, strict=True)
    ]  # fmt: skip
    for v in videos:
        if v.features.vision_features is None:
            raise ValueError("the video has no SigLIP features (token shards precomputed without --with-vision-features)")
    frames = [int(v.features.frame_mask[0].sum()) for v in videos]
    features = VideoFeatures.from_videos(  # (B, T, ...) padded over frames
        [v.features.vision_features[0, :t] for v, t in zip(videos, frames, strict=True)],
        [v.features.camera_tokens[0, :t] for v, t in zip(videos, frames, strict=True)],
        [v.features.patch_tokens[0, :t] for v, t in zip(videos, frames, strict=True)],
        dtype=config.torch_dtype,
    )
    text = processor.build_batch(messages)
    per_frame = config.tokens_per_frame
    prompt_tokens = [int(n) - 1 + t * per_frame for n, t in zip(text.attention_mask.sum(1).tolist(), frames, strict=True)]
    return GenerationInputs(
        text=text,
        features=features,
        prompt_tokens=prompt_tokens,
        vocab_size=processor.vocab_size,
        suppress_ids=processor.input_only_ids,
    )


def prompt_length(
    processor: Vlm3rProcessor, question: Question, timestamps: Sequence[float], duration_s: float
) -> int:
    """The prompt length the LLM sees for ``question`` about a video whose sampled frames are at
    ``timestamps`` (T of them): the text tokens plus T x ``tokens_per_frame`` video tokens, the
    ``prompt_tokens`` that :func:`generation_inputs` reports, computed without any features.

    Raises:
        ValueError: a question the prompt builder refuses (one holding the video placeholder).
    """
    config = processor.config
    message = processor.user_message(question.question, question.options, timestamps=timestamps, duration_s=duration_s)
    text = processor.build_batch([message])
    return int(text.attention_mask.sum()) - 1 + len(timestamps) * config.tokens_per_frame


class _StopRows(StoppingCriteria):
    """Ends the rows ``done()`` flags (B,), checked after every decoding step."""

    def __init__(self, done: Callable[[], Sequence[bool]]):
        self.done = done

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.tensor(list(self.done()), dtype=torch.bool, device=input_ids.device)  # (B,)


@torch.inference_mode()
def generate(
    model: Vlm3rForConditionalGeneration,
    inputs: GenerationInputs,
    max_new_tokens: int,
    streamer=None,
    stop_rows: Callable[[], Sequence[bool]] | None = None,
) -> torch.Tensor:
    """Greedy decoding of a batch (as in the official evaluation); returns (B, L_new) new ids.

    ``stop_rows``: called after every step, returns (B,) flags; a flagged row ends there (its
    later tokens are padding) and decoding ends once every row has (serving: a row whose client
    left, or that reached its own ``max_tokens``, stops costing steps).
    """
    device = model.device
    return model.generate(
        input_ids=inputs.text.input_ids.to(device),
        attention_mask=inputs.text.attention_mask.to(device),
        features=inputs.features.to(device),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        streamer=streamer,
        vocab_size=inputs.vocab_size,
        suppress_ids=inputs.suppress_ids,
        stopping_criteria=None if stop_rows is None else StoppingCriteriaList([_StopRows(stop_rows)]),
    )


def context_from_video(
    model: Vlm3rForConditionalGeneration, processor: Vlm3rProcessor, source: str | bytes
) -> VideoContext:
    """Decodes a video (the one frame sampler) and encodes it (the one encoder path)."""
    video = read_video(source, num_samples=model.config.num_frames)
    with torch.inference_mode():
        feats = model.encode_frames(processor.preprocess_frames([video.frames]))
    return VideoContext(feats.to("cpu"), tuple(float(t) for t in video.timestamps), float(video.duration_s))


def online_contexts(
    model: Vlm3rForConditionalGeneration, source: str | bytes, fractions: Sequence[float] = (1.0,)
) -> dict[float, VideoContext]:
    """The video as a live stream: the frames the offline sampler picks (T of them) are pushed one
    by one, in order, into a :class:`~vlm3r_core.live.LiveSession` (no rate limit, K = T, so every
    pushed frame is a keyframe) and the session is read when a fraction of the video has played.

    After the whole video (fraction 1) the context equals :func:`context_from_video`'s bit for bit
    on CPU float32 (the live module's equivalence), so the answers are the offline answers. At a
    fraction f < 1 the session has seen the sampled frames at or before f x duration (at least the
    first) and the prompt says the video lasts f x duration.

    Args:
        fractions: each in (0, 1]; 1 is always included.

    Returns:
        ``{fraction: VideoContext}`` (features on the CPU).
    """
    if any(not 0.0 < f <= 1.0 for f in fractions):
        raise ValueError(f"fractions must lie in (0, 1], got {list(fractions)}")
    video = read_video(source, num_samples=model.config.num_frames)
    timestamps = [float(t) for t in video.timestamps]
    duration = float(video.duration_s)
    session = LiveSession(model, KeyframePolicy(max_keyframes=max(2, len(timestamps)), points_per_keyframe=0))
    # the number of pushed frames after which each fraction is read
    read_after: dict[int, list[float]] = {}
    for f in sorted(set(fractions) | {1.0}):
        seen = len(timestamps) if f == 1.0 else max(1, sum(t <= f * duration for t in timestamps))
        read_after.setdefault(seen, []).append(f)
    out: dict[float, VideoContext] = {}
    with torch.inference_mode():
        for i, (frame, t) in enumerate(zip(video.frames, timestamps, strict=True)):
            session.push(frame, t)
            for f in read_after.get(i + 1, []):
                live = session.features(duration_s=duration if f == 1.0 else f * duration)
                out[f] = VideoContext(live.features.to("cpu"), live.timestamps, live.duration_s)
    return out


def blind_context(model: Vlm3rForConditionalGeneration) -> VideoContext:
    """No video: zero frames (a text-only run; see the module docstring)."""
    cfg = model.config
    g, n = cfg.vision_grid, (cfg.cut3r_image_size // cfg.cut3r.patch_size) ** 2
    features = VideoFeatures(
        vision_features=torch.zeros(1, 0, g * g, cfg.vision_dim),
        camera_tokens=torch.zeros(1, 0, 1, cfg.spatial_dim),
        patch_tokens=torch.zeros(1, 0, n, cfg.spatial_dim),
        frame_mask=torch.zeros(1, 0, dtype=torch.bool),
    )
    return VideoContext(features, (), 0.0)


def contexts_from_tokens(tokens_uri: str, video_ids: Sequence[str]) -> dict[str, VideoContext]:
    """The contexts of the videos found in a token shard set (absent ids are left out)."""
    out = {}
    for vt in iter_video_tokens(read_token_table(tokens_uri, video_ids=list(video_ids))):
        if vt.vision_features is None:
            raise ValueError(f"{tokens_uri}: shards hold no vision_features (precompute with --with-vision-features)")
        features = VideoFeatures.from_videos([vt.vision_features], [vt.camera_tokens], [vt.patch_tokens])
        out[vt.video_id] = VideoContext(features, tuple(vt.timestamps.tolist()), float(vt.duration_s))
    return out


def _online_key(video_id: str, fraction: float) -> str:
    """The context of ``video_id`` after ``fraction`` of it has played (online answering)."""
    return f"{video_id}@{fraction:g}"


class AnswerQuestions:
    """Answers a batch of benchmark rows (columns of :class:`vlm3r_core.evaluation.BenchmarkRow`).

    Returns columns ``id``, ``video_id``, ``prediction`` (raw model output or None) and ``error``
    (None, or why the row could not be answered: unreadable video, no token row, a prompt the
    model cannot take, ...). A failure of one row never fails the others of its batch.

    Args:
        model: a preset name or a ``save_pretrained`` folder/URI.
        tokens: token shard set URI; None decodes and encodes the raw videos.
        device: where the model runs.
        max_new_tokens: answer length limit.
        dtype: run in this dtype instead of the model config's (see :func:`load_model`).
        blind: answer without the video (text only; see :func:`blind_context`).
        online: stream each video through the live-session path (:func:`online_contexts`) and
            answer each row after its ``seen_fraction`` (default 1: the whole video) has played.
        online_fractions: the fractions rows may ask for besides 1 (each video is streamed once
            for all of them).

    Raw videos are decoded and encoded once per call for the rows that need them; the contexts of
    the last ``CACHED_VIDEOS`` videos are kept, so a video whose questions span consecutive
    batches (as benchmark files order them) is not encoded again.
    """

    CACHED_VIDEOS = 2

    def __init__(self, model: str, tokens: str | None = None, device: str = "cpu", max_new_tokens: int = 16,
                 dtype: str | None = None, blind: bool = False, online: bool = False,
                 online_fractions: Sequence[float] = ()):  # fmt: skip
        if online and (tokens or blind):
            raise ValueError("online answering streams the raw videos: it takes neither tokens nor blind")
        self.device = torch.device(device)
        self.model, self.processor = load_model(model, self.device, dtype=dtype)
        self.tokens = tokens
        self.max_new_tokens = max_new_tokens
        self.blind = blind
        self.online = online
        self.online_fractions = tuple(sorted({*online_fractions, 1.0}))
        self._cache: OrderedDict[str, dict[str, VideoContext]] = OrderedDict()  # video id -> its contexts by key

    def _video_contexts(self, video_id: str, uri: str) -> dict[str, VideoContext]:
        """The contexts of one raw video by context key (online: one per fraction), cached."""
        if video_id in self._cache:
            self._cache.move_to_end(video_id)
            return self._cache[video_id]
        if self.online:
            contexts = {_online_key(video_id, f): c for f, c in online_contexts(self.model, uri, self.online_fractions).items()}
        else:
            contexts = {video_id: context_from_video(self.model, self.processor, uri)}
        self._cache[video_id] = contexts
        while len(self._cache) > self.CACHED_VIDEOS:
            self._cache.popitem(last=False)
        return contexts

    def _context_key(self, row: dict) -> str:
        """Which context a row is answered with: its video, and online also how much of it was seen."""
        return _online_key(row["video_id"], float(row.get("seen_fraction", 1.0))) if self.online else row["video_id"]

    def _load_videos(self, rows: list[dict]) -> tuple[dict[str, VideoContext], dict[str, str]]:
        """Contexts per context key, and the reason for every video that failed (per video id)."""
        ids = sorted({r["video_id"] for r in rows})
        if self.blind:
            return {i: blind_context(self.model) for i in ids}, {}
        if self.tokens:
            videos = contexts_from_tokens(self.tokens, ids)
            return videos, {i: f"no token row for {i} in {self.tokens}" for i in ids if i not in videos}
        videos, errors = {}, {}
        uri_of = {r["video_id"]: r["video"] for r in rows}
        for video_id in ids:
            try:
                videos.update(self._video_contexts(video_id, uri_of[video_id]))
            except (OSError, ValueError) as e:  # VideoDecodeError is a ValueError
                errors[video_id] = error_reason(e)
        return videos, errors

    def _answer(self, rows: list[dict], videos: dict[str, VideoContext]) -> list[str]:
        questions = [Question(r["question"], tuple(r["options"])) for r in rows]
        contexts = [videos[self._context_key(r)] for r in rows]
        inputs = generation_inputs(self.model, self.processor, questions, contexts)
        return self.processor.batch_decode(generate(self.model, inputs, self.max_new_tokens))

    def answer(self, rows: list[dict]) -> list[tuple[str | None, str | None]]:
        """(prediction, error) per row; rows are dicts with BenchmarkRow fields and ``video_id``."""
        videos, errors = self._load_videos(rows)
        ok = [r for r in rows if self._context_key(r) in videos]
        results: dict[str, tuple[str | None, str | None]] = {}
        if ok:
            try:
                answers = self._answer(ok, videos)
                results = {r["id"]: (a, None) for r, a in zip(ok, answers, strict=True)}
            except (ValueError, RuntimeError):  # one bad row: answer the rows one by one, it fails alone
                for r in ok:
                    try:
                        results[r["id"]] = (self._answer([r], videos)[0], None)
                    except (ValueError, RuntimeError) as e:
                        results[r["id"]] = (None, error_reason(e))
        missing = "no context for this row (an online row whose seen_fraction is not among online_fractions)"
        return [results.get(r["id"], (None, errors.get(r["video_id"], missing))) for r in rows]

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
