"""The two model deployments of the VLM-3R service.

- ``GeometryEncoder``: decodes and samples a video's frames (``vlm3r_core.video.read_video``, the
  same sampler as training and evaluation) and runs the frozen encoders (SigLIP and CUT3R,
  ``model.encode_frames``), batching the videos of concurrent requests with ``@serve.batch``. The
  encoded tokens of recent videos are kept in a bounded LRU cache keyed by the SHA-256 of the video
  bytes, so repeated questions about one video run the encoders once. Decoding streams the video
  and squashes frames larger than the encoders' input to that size as they are decoded
  (``read_video(resize_to=...)``), ``decode_concurrency`` videos at a time, so memory after
  admission does not grow with the resolution.
- ``LanguageModel``: fusion, projector and LLM (``model.generate``), batching generation across
  requests; the prompt is built by ``Vlm3rProcessor.user_message`` with the ``PromptConfig``
  stored with the model, the call training and evaluation make. A row whose caller left (a client
  that disconnected mid-stream) or that reached its own ``max_tokens`` stops costing decoding steps.

Per-request isolation in both ``@serve.batch`` methods: every item is checked alone before it
joins the batch (one that fails the check fails alone), and when the batched call still fails
before producing anything, its items are run again one by one, so a failure stays with the item
that causes it and the rest of the batch is answered.

Both load the model named by ``Vlm3rArgs.model`` (a preset name or a ``save_pretrained`` folder or
URI) and run on the replica's GPU when Ray gave it one, else on CPU. Legend: ``B`` videos in a
batch, ``T`` sampled frames, ``P`` vision tokens per frame, ``N`` CUT3R patch tokens, ``C`` widths.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import resource
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import ray
import torch
from ray import serve
from transformers.generation.streamers import BaseStreamer

from serve_apps.args import Vlm3rArgs
from vlm3r_core import inference
from vlm3r_core.inference import Question, VideoContext, generation_inputs, prompt_length
from vlm3r_core.video import VideoTooLargeError, VideoTooLongError, read_video
from vlm3r_core.vlm import FramePixels, VideoFeatures, Vlm3rForConditionalGeneration, Vlm3rProcessor

VideoLimitError = VideoTooLongError  # over the frame-count or duration limit of the service
VideoResolutionError = VideoTooLargeError  # a decoded frame over the pixel limit of the service


class PromptError(ValueError):
    """A question the model cannot take (e.g. one holding the video placeholder); its request
    fails alone with a 400."""


class ContextLengthError(PromptError):
    """A prompt that, with ``max_new_tokens``, is longer than the model's context."""


class PixelsError(ValueError):
    """Encoder inputs of the wrong shape, type or values; the request fails alone."""

# Components of Vlm3rForConditionalGeneration each deployment builds and runs.
ENCODER_PARTS = ("vision_tower", "cut3r")
LANGUAGE_PARTS = ("fusion", "projector", "image_newline", "language_model")


# ----------------------------------------------------------------------------------------------
# What travels between deployments


# A video's encoder outputs, frame times and length: ``vlm3r_core.inference.VideoContext``,
# features (1, T, ...) on the CPU. The GeometryEncoder returns it, the LanguageModel takes it.
EncodedVideo = VideoContext


@dataclass(frozen=True)
class GenerationRequest:
    """One question for the ``LanguageModel``: text, lettered options (multiple choice) and a budget."""

    question: str
    options: tuple[str, ...] = ()
    max_new_tokens: int = 64


@dataclass(frozen=True)
class GenerationOutput:
    """An answer, or in a stream the text added since the previous output.

    ``finish_reason`` is "stop" (end of answer) or "length" (``max_new_tokens`` reached) on the
    last output and None before; the token counts are those so far.
    """

    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class ReplicaMemory:
    """Resident memory of a replica's process: now and its peak since the process started."""

    pid: int
    rss_bytes: int
    peak_rss_bytes: int


def replica_memory() -> ReplicaMemory:
    """This process's resident set (``VmRSS``) and its high-water mark (``VmHWM``), from /proc
    (``getrusage`` for the peak where /proc is missing)."""
    fields = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    peak = fields.get("VmHWM", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return ReplicaMemory(pid=os.getpid(), rss_bytes=fields.get("VmRSS", peak), peak_rss_bytes=peak)


@dataclass
class EncoderStats:
    """Counters of one ``GeometryEncoder`` replica (read through a handle: ``encoder.stats.remote()``)."""

    replica_actor: str  # the replica's actor name in the "serve" namespace
    pid: int
    videos_encoded: int = 0  # videos that went through the encoders
    cache_hits: int = 0  # requests answered from the token cache (or from an identical in-flight request)
    cache_entries: int = 0
    batches: int = 0
    largest_batch: int = 0
    items_failed: int = 0  # batch items answered with an error (each alone)
    items_retried_alone: int = 0  # items run again one by one after their batch failed
    recent_batches: list[tuple[int, int]] = field(default_factory=list)  # (items, items failed), last 32
    memory: ReplicaMemory | None = None


@dataclass
class LanguageModelStats:
    """Counters of one ``LanguageModel`` replica (``language_model.stats.remote()``)."""

    replica_actor: str
    pid: int
    batches: int = 0
    largest_batch: int = 0
    rows: int = 0
    rows_failed: int = 0  # rows answered with an error (each alone)
    rows_retried_alone: int = 0  # rows run again one by one after their batch failed
    rows_cancelled: int = 0  # rows whose caller left before the answer ended
    ongoing: list[int] = field(default_factory=list)  # max_new_tokens of each request here now (queued or decoding)
    decoding: list[tuple[int, int]] = field(default_factory=list)  # (steps so far, max_new_tokens) per row now
    recent_batches: list[tuple[int, int]] = field(default_factory=list)  # (rows, rows failed), last 32
    # Decoding steps each recently cancelled row ran in all (its budget was its max_tokens).
    cancelled_row_steps: list[tuple[int, int]] = field(default_factory=list)  # (steps run, max_new_tokens)
    memory: ReplicaMemory | None = None


# What one video decoder holds at most: H.264's 16 reference frames, the frame being decoded and
# the one handed out, at 3 bytes a pixel (10-bit yuv420; 8-bit needs 1.5). Slice threading (PyAV's
# default) adds no frames.
DECODER_FRAMES, DECODER_BYTES_PER_PIXEL = 18, 3
# Resident memory a replica gains from serving at all, whatever the requests: the allocator's
# arenas and free lists, interpreter objects, first-use buffers (measured on the tiny preset:
# 35-120 MiB over a soak of 240 requests, most of it in the first requests).
RUNTIME_SLACK_BYTES = 128 * 2**20


def memory_budgets(args: Vlm3rArgs, config) -> dict[str, dict[str, int]]:
    """What each deployment's replica may hold above its loaded, warmed-up baseline under any
    accepted requests, term by term in bytes: frames x pixels x channels x dtype arithmetic from
    the settings and the model config (``Vlm3rConfig``). Activations of the networks come on top
    (GPU memory on a GPU replica); ``benchmarks/bench_serve.py --soak`` checks the total."""
    k, s, g = config.num_frames, config.siglip_image_size, config.cut3r_image_size
    side = max(s, g)
    dtype_bytes = torch.empty((), dtype=config.torch_dtype).element_size()
    patches = (g // config.cut3r.patch_size) ** 2
    video_features = k * (config.vision_grid**2 * config.vision_dim + (patches + 1) * config.spatial_dim) * dtype_bytes
    pixels_f32 = k * 3 * (s * s + g * g) * 4  # one video's SigLIP and CUT3R inputs, float32
    decode = DECODER_FRAMES * args.max_video_pixels * DECODER_BYTES_PER_PIXEL + k * side * side * 3 + pixels_f32
    queued_videos = 16 * args.max_video_bytes  # GeometryEncoder's max_ongoing_requests
    text = config.text
    width = int(text["hidden_size"])
    # The longest sequence admission lets through: the video tokens, the question, the answer and
    # up to 1024 tokens of system prompt and frame times; never more than the model's context.
    context = min(
        int(text["max_position_embeddings"]),
        k * config.tokens_per_frame + args.max_question_tokens + args.max_tokens_limit + 1024,
    )
    kv_heads = int(text.get("num_key_value_heads", text["num_attention_heads"]))
    head_dim = width // int(text["num_attention_heads"])
    slack = {"allocator and runtime slack": RUNTIME_SLACK_BYTES}
    return {
        "Vlm3rIngress": {
            # the body, its parsed JSON (the data URL as a str) and the decoded video: 3 x the bodies held
            "request bodies (3 x max_inflight_body_bytes)": 3 * args.max_inflight_body_bytes,
            **slack,
        },
        "GeometryEncoder": {
            "video bytes of ongoing requests (16 x max_video_bytes)": queued_videos,
            "decoding (decode_concurrency x (decoder frames + sampled frames + float pixels))": args.decode_concurrency
            * decode,
            "encoder batch (2 x encoder_batch_size x float pixels)": 2 * args.encoder_batch_size * pixels_f32,
            "token cache (token_cache_entries x video features)": args.token_cache_entries * video_features,
            **slack,
        },
        "LanguageModel": {
            # the arguments of the requests in the replica, and the padded copy of one batch
            "video features of ongoing requests (16 + lm_batch_size)": (16 + args.lm_batch_size) * video_features,
            "KV cache (lm_batch_size x sequence x layers x 2 x kv heads x head dim)": args.lm_batch_size
            * context
            * text["num_hidden_layers"]
            * 2
            * kv_heads
            * head_dim
            * dtype_bytes,
            # prompt embeddings: the merged rows, the padded batch and the first layer's input
            "prompt embeddings (3 x lm_batch_size x sequence x width)": 3 * args.lm_batch_size * context * width * dtype_bytes,
            **slack,
        },
    }


def _remember(history: list, item, keep: int = 32) -> list:
    """``history`` with ``item`` appended, keeping the last ``keep`` entries."""
    return list(deque([*history, item], maxlen=keep))


T = TypeVar("T")
R = TypeVar("R")


def run_isolated(run: Callable[[list[T]], list[R]], items: list[T]) -> tuple[list[R | Exception], bool]:
    """``run(items)`` once; if it raises, ``run([item])`` for each item alone, so that a failure
    stays with the item that causes it. Returns one result or exception per item, and whether the
    items were run alone."""
    try:
        results = run(items)
        if len(results) != len(items):
            raise RuntimeError(f"a batch of {len(items)} gave {len(results)} results")
        return list(results), False
    except Exception as batch_error:
        if len(items) == 1:
            return [batch_error], False
    out: list[R | Exception] = []
    for item in items:
        try:
            out.append(run([item])[0])
        except Exception as e:
            out.append(e)
    return out, True


# ----------------------------------------------------------------------------------------------
# Model loading


def load_model(source: str, parts: tuple[str, ...]) -> tuple[Vlm3rForConditionalGeneration, Vlm3rProcessor]:
    """The model share of one replica (see ``vlm3r_core.inference.load_model``), on the GPU Ray
    assigned to the replica, else on the CPU."""
    device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
    return inference.load_model(source, device, parts)


def _replica_actor() -> str:
    return serve.get_replica_context().replica_id.to_full_id_str()


class TokenCache:
    """A bounded LRU map from video content hash to ``EncodedVideo``."""

    def __init__(self, max_entries: int):
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._entries: OrderedDict[str, EncodedVideo] = OrderedDict()

    def get(self, key: str) -> EncodedVideo | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: EncodedVideo) -> None:
        if self.max_entries == 0:
            return
        self._entries[key] = value
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


# ----------------------------------------------------------------------------------------------
# GeometryEncoder


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4},
    max_ongoing_requests=16,
    graceful_shutdown_timeout_s=5,
)
class GeometryEncoder:
    """Video bytes -> sampled frames -> SigLIP + CUT3R tokens, with a token cache."""

    def __init__(self, args: Vlm3rArgs):
        self.args = args
        self.model, self.processor = load_model(args.model, ENCODER_PARTS)
        config = self.model.config
        self.num_frames = config.num_frames
        # Frames larger than the encoders' largest input are squashed to it while decoding.
        self.decode_side = max(config.siglip_image_size, config.cut3r_image_size)
        self.cache = TokenCache(args.token_cache_entries)
        self._inflight: dict[str, asyncio.Future] = {}
        self._decode_slots = asyncio.Semaphore(args.decode_concurrency)
        self._stats = EncoderStats(replica_actor=_replica_actor(), pid=os.getpid())
        self._encode_batch.set_max_batch_size(args.encoder_batch_size)

    async def encode(self, video: bytes, name: str) -> EncodedVideo:
        """Encodes a video (or returns its cached tokens).

        Raises:
            VideoDecodeError: the bytes are not a decodable video (names ``name``).
            VideoLimitError: more frames or seconds than the service allows.
        """
        key = hashlib.sha256(video).hexdigest()
        cached = self.cache.get(key)
        if cached is not None:
            self._stats.cache_hits += 1
            return cached
        task = self._inflight.get(key)
        if task is None:  # the first request for this video encodes it; identical concurrent ones wait
            task = asyncio.ensure_future(self._encode_new(video, name, key))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        else:
            self._stats.cache_hits += 1
        return await asyncio.shield(task)

    async def _encode_new(self, video: bytes, name: str, key: str) -> EncodedVideo:
        async with self._decode_slots:  # at most decode_concurrency decoders' buffers at once
            decoded = await asyncio.to_thread(
                read_video,
                video,
                self.num_frames,
                self.args.max_video_frames,
                name,
                resize_to=self.decode_side,
                max_pixels=self.args.max_video_pixels,
            )  # frames (T, <= side, <= side, 3)
            if decoded.duration_s > self.args.max_video_duration_s:
                raise VideoLimitError(
                    f"{name}: {decoded.duration_s:.1f} s long, more than the limit of {self.args.max_video_duration_s} s"
                )
            pixels = await asyncio.to_thread(self.processor.preprocess_frames, [decoded.frames])  # (1, T, 3, S, S)
        features = await self.encode_pixels(pixels)
        encoded = EncodedVideo(
            features=features,
            timestamps=tuple(float(t) for t in decoded.timestamps),
            duration_s=float(decoded.duration_s),
        )
        self.cache.put(key, encoded)
        self._stats.videos_encoded += 1
        return encoded

    async def encode_pixels(self, pixels: FramePixels) -> VideoFeatures:
        """Runs the frozen encoders on one video's preprocessed frames (``processor.preprocess_frames``
        of one video: (1, T, 3, S, S) and (1, T, 3, G, G) in [-1, 1]), batched with concurrent requests.

        Raises:
            PixelsError: inputs of another shape, dtype or with non-finite values (checked alone,
                before the item joins a batch).
        """
        self._check_pixels(pixels)
        out = await self._encode_batch(pixels)
        if isinstance(out, Exception):
            raise out
        return out

    def _check_pixels(self, pixels: FramePixels) -> None:
        config = self.model.config
        t = self.num_frames
        expected = {
            "siglip": (1, t, 3, config.siglip_image_size, config.siglip_image_size),
            "cut3r": (1, t, 3, config.cut3r_image_size, config.cut3r_image_size),
        }
        for name, shape in expected.items():
            x = getattr(pixels, name, None)
            if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape or x.dtype != torch.float32:
                got = (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x).__name__
                raise PixelsError(f"{name} pixels must be float32 {shape}, got {got}")
            if not bool(torch.isfinite(x).all()):
                raise PixelsError(f"{name} pixels hold NaN or infinite values")
        mask = pixels.frame_mask
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (1, t) or mask.dtype != torch.bool:
            raise PixelsError(f"frame_mask must be bool (1, {t})")

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _encode_batch(self, pixels: list[FramePixels]) -> list[VideoFeatures | Exception]:
        """Runs the frozen encoders once for the videos of concurrent requests; if that fails, once
        per video, so a failing video fails alone (its slot holds the exception)."""
        self._stats.batches += 1
        self._stats.largest_batch = max(self._stats.largest_batch, len(pixels))
        results, alone = await asyncio.to_thread(run_isolated, self._run_encoders, pixels)
        failed = sum(isinstance(r, Exception) for r in results)
        self._stats.items_retried_alone += len(pixels) if alone else 0
        self._stats.items_failed += failed
        self._stats.recent_batches = _remember(self._stats.recent_batches, (len(pixels), failed))
        return results

    @torch.inference_mode()
    def _run_encoders(self, pixels: list[FramePixels]) -> list[VideoFeatures]:
        batch = FramePixels(
            siglip=torch.cat([p.siglip for p in pixels]),  # (B, T, 3, S, S)
            cut3r=torch.cat([p.cut3r for p in pixels]),  # (B, T, 3, G, G)
            frame_mask=torch.cat([p.frame_mask for p in pixels]),  # (B, T)
        )
        feats = self.model.encode_frames(batch).to("cpu")
        # Copies, not views: a pickled view would carry (and the cache would keep) the whole batch.
        return [feats.video(b) for b in range(len(pixels))]  # B x (1, T, ...)

    async def stats(self) -> EncoderStats:
        self._stats.cache_entries = len(self.cache)
        self._stats.memory = replica_memory()
        return self._stats


# ----------------------------------------------------------------------------------------------
# LanguageModel


class _StepStreamer(BaseStreamer):
    """Receives the tokens ``generate`` picks at each step (in its thread) and hands them to the
    replica's event loop. The first ``put`` is the prompt and is skipped."""

    def __init__(self, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue):
        self.loop, self.queue, self.prompt_seen = loop, queue, False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.loop.call_soon_threadsafe(self.queue.put_nowait, value.reshape(-1).tolist())  # (B,)

    def end(self) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, None)


@dataclass
class _RowState:
    """Decoding progress of one request in a generation batch.

    ``steps`` and ``stopped`` belong to the generation thread (decoding steps run for this row, and
    whether ``generate`` was told to end it); the others to the event loop.
    """

    max_new_tokens: int
    cancelled: threading.Event
    prompt_tokens: int = 0
    ids: list[int] = field(default_factory=list)
    emitted: str = ""
    finished: bool = False
    error: Exception | None = None
    steps: int = 0
    stopped: bool = False


_Item = tuple["GenerationRequest", "EncodedVideo", threading.Event]


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 4},
    max_ongoing_requests=16,
    graceful_shutdown_timeout_s=5,
)
class LanguageModel:
    """Question + encoded video -> answer (whole, or streamed token by token)."""

    def __init__(self, args: Vlm3rArgs):
        self.args = args
        self.model, self.processor = load_model(args.model, LANGUAGE_PARTS)
        self.context_tokens = int(self.model.config.text["max_position_embeddings"])
        self.stop_ids = {self.processor.eos_token_id, self.processor.pad_token_id}
        self._stats = LanguageModelStats(replica_actor=_replica_actor(), pid=os.getpid())
        self._decoding: list[list[_RowState]] = []  # the rows of the group decoding now
        self._ongoing: list[int] = []  # max_new_tokens of the requests in this replica
        # One long-lived thread decodes (groups run one at a time): no thread, and no allocator
        # arena, per batch.
        self._generation_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generate")
        self._generate_batch.set_max_batch_size(args.lm_batch_size)

    async def generate(self, request: GenerationRequest, video: EncodedVideo) -> GenerationOutput:
        """The whole answer.

        Raises:
            PromptError: the question does not fit the model (this request alone).
        """
        text, last = [], None
        async for out in self.generate_stream(request, video):
            text.append(out.text)
            last = out
        return GenerationOutput("".join(text), last.finish_reason, last.prompt_tokens, last.completion_tokens)

    async def generate_stream(
        self, request: GenerationRequest, video: EncodedVideo
    ) -> AsyncIterator[GenerationOutput]:
        """The answer as it is generated (call with ``handle.options(stream=True)``). When the caller
        stops listening (a client that disconnected, a cancelled request), its row stops decoding."""
        cancelled = threading.Event()
        self._ongoing.append(request.max_new_tokens)
        try:
            async for out in self._generate_batch((request, video, cancelled)):
                if isinstance(out, Exception):
                    raise out
                yield out
        finally:
            cancelled.set()  # a no-op once the answer is complete
            self._ongoing.remove(request.max_new_tokens)

    async def stats(self) -> LanguageModelStats:
        self._stats.memory = replica_memory()
        self._stats.ongoing = list(self._ongoing)
        self._stats.decoding = [(r.steps, r.max_new_tokens) for rows in self._decoding for r in rows if not r.stopped]
        return self._stats

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batch(self, items: list[_Item]) -> AsyncIterator[list]:
        """Generates for concurrent requests together; yields, per step, one entry per request: its
        new text, its exception (once), or ``StopIteration`` once it is done.

        Each row is checked alone first (a row that cannot be prompted fails alone). The valid rows
        decode as one batch; if that fails before the first token, they decode again one by one.
        """
        stats = self._stats
        stats.batches += 1
        stats.largest_batch = max(stats.largest_batch, len(items))
        stats.rows += len(items)
        rows = [_RowState(req.max_new_tokens, cancelled) for req, _, cancelled in items]
        questions = [Question(req.question, req.options) for req, _, _ in items]
        videos = [video for _, video, _ in items]
        for row, question, video in zip(rows, questions, videos, strict=True):
            row.error = self._check_row(row, question, video)
        if any(row.error is not None for row in rows):
            yield [self._idle(row) for row in rows]
        groups = [[i for i, row in enumerate(rows) if row.error is None]]
        while groups:
            group = groups.pop(0)
            if not group:
                continue
            started = False
            try:
                inputs = generation_inputs(
                    self.model, self.processor, [questions[i] for i in group], [videos[i] for i in group]
                )
                async for step in self._decode(inputs, [rows[i] for i in group]):
                    started = True
                    out = [self._idle(row) for row in rows]
                    for i, token in zip(group, step, strict=True):
                        out[i] = self._advance(rows[i], token)
                    yield out
            except Exception as e:
                if not started and len(group) > 1:  # run them alone: the failure stays with its row
                    stats.rows_retried_alone += len(group)
                    groups = [[i] for i in group] + groups
                    continue
                for i in group:
                    if not rows[i].finished:
                        rows[i].error = e
            self._record_cancelled([rows[i] for i in group])
            yield [self._finish(row) if i in group else self._idle(row) for i, row in enumerate(rows)]
        failed = sum(row.error is not None for row in rows)
        stats.rows_failed += failed
        stats.recent_batches = _remember(stats.recent_batches, (len(rows), failed))

    def _check_row(self, row: _RowState, question: Question, video: EncodedVideo) -> Exception | None:
        """Why this row cannot be generated (checked alone, before it joins the batch), or None."""
        if video.features.vision_features is None:
            return PromptError("the video has no SigLIP features")
        try:
            row.prompt_tokens = prompt_length(self.processor, question, video.timestamps, video.duration_s)
        except ValueError as e:
            return PromptError(str(e))
        if row.prompt_tokens + row.max_new_tokens > self.context_tokens:
            return ContextLengthError(
                f"the model's context is {self.context_tokens} tokens; the prompt is {row.prompt_tokens} "
                f"and max_tokens is {row.max_new_tokens}"
            )
        return None

    async def _decode(self, inputs, rows: list[_RowState]) -> AsyncIterator[list[int]]:
        """Runs ``inference.generate`` in a worker thread; yields each step's (B,) tokens. A row
        stops decoding once its caller left or it has its own ``max_new_tokens``."""
        loop, queue, errors = asyncio.get_running_loop(), asyncio.Queue(), []
        abandoned = threading.Event()  # this generator was closed early: end every row

        def stop_rows() -> list[bool]:  # in the generation thread, after every step
            flags = []
            for row in rows:
                if not row.stopped:
                    row.steps += 1
                    row.stopped = abandoned.is_set() or row.cancelled.is_set() or row.steps >= row.max_new_tokens
                flags.append(row.stopped)
            return flags

        worker = loop.run_in_executor(
            self._generation_thread,
            self._run_generate,
            inputs,
            max(r.max_new_tokens for r in rows),
            _StepStreamer(loop, queue),
            errors,
            stop_rows,
        )
        self._decoding.append(rows)
        try:
            while (step := await queue.get()) is not None:
                yield step
        finally:
            abandoned.set()
            self._decoding.remove(rows)
        await worker
        if errors:
            raise errors[0]

    def _run_generate(self, inputs, max_new_tokens: int, streamer: _StepStreamer, errors: list, stop_rows) -> None:
        """Runs ``inference.generate`` in the generation thread; each step goes to ``streamer``, a failure to ``errors``."""
        try:
            inference.generate(self.model, inputs, max_new_tokens, streamer=streamer, stop_rows=stop_rows)
        except Exception as e:  # raised again on the event loop, for the rows of this group
            errors.append(e)
            streamer.end()

    def _record_cancelled(self, rows: list[_RowState]) -> None:
        for row in rows:
            if row.cancelled.is_set() and row.steps < row.max_new_tokens and not row.finished:
                self._stats.rows_cancelled += 1
                self._stats.cancelled_row_steps = _remember(
                    self._stats.cancelled_row_steps, (row.steps, row.max_new_tokens)
                )

    def _idle(self, row: _RowState):
        """A row's entry in a step that does not decode it: its error (once), StopIteration when
        done, else no new text (it waits for its turn)."""
        if row.finished:
            return StopIteration
        if row.error is not None:
            row.finished = True
            return row.error
        return GenerationOutput("", None, row.prompt_tokens, len(row.ids))

    def _advance(self, row: _RowState, token: int) -> GenerationOutput | type[StopIteration]:
        """Adds one generated token to a row; returns the new text (or StopIteration when done)."""
        if row.finished:
            return StopIteration
        if row.cancelled.is_set():  # nobody listens any more
            return GenerationOutput("", None, row.prompt_tokens, len(row.ids))
        if token in self.stop_ids:
            row.finished = True
            return self._output(row, "stop")
        row.ids.append(token)
        if len(row.ids) >= row.max_new_tokens:
            row.finished = True
            return self._output(row, "length")
        return self._output(row, None)

    def _finish(self, row: _RowState):
        if row.finished:
            return StopIteration
        if row.error is not None:
            row.finished = True
            return row.error
        row.finished = True  # generate ended without this row's stop token (e.g. a length limit of the LLM)
        return self._output(row, "stop")

    def _output(self, row: _RowState, finish_reason: str | None) -> GenerationOutput:
        """The text added since the last output; the whole answer is ``processor.batch_decode``'s."""
        text = self.processor.tokenizer.decode(row.ids, skip_special_tokens=True).strip()
        delta = ""
        # Hold back an incomplete UTF-8 character (or any re-spelling of earlier text) until it settles.
        if text.startswith(row.emitted) and (finish_reason is not None or not text.endswith("\ufffd")):
            delta, row.emitted = text[len(row.emitted) :], text
        return GenerationOutput(delta, finish_reason, row.prompt_tokens, len(row.ids))
