"""The two model deployments of the VLM-3R service.

- ``GeometryEncoder``: decodes and samples a video's frames (``vlm3r_core.video.read_video``, the
  same sampler as training and evaluation) and runs the frozen encoders (SigLIP and CUT3R,
  ``model.encode_frames``), batching the videos of concurrent requests with ``@serve.batch``. The
  encoded tokens of recent videos are kept in a bounded LRU cache keyed by the SHA-256 of the video
  bytes, so repeated questions about one video run the encoders once.
- ``LanguageModel``: fusion, projector and LLM (``model.generate``), batching generation across
  requests; the prompt is built by ``Vlm3rProcessor.user_message`` with the ``PromptConfig``
  stored with the model, the call training and evaluation make.

Both load the model named by ``Vlm3rArgs.model`` (a preset name or a ``save_pretrained`` folder or
URI) and run on the replica's GPU when Ray gave it one, else on CPU. Legend: ``B`` videos in a
batch, ``T`` sampled frames, ``P`` vision tokens per frame, ``N`` CUT3R patch tokens, ``C`` widths.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import ray
import torch
from ray import serve
from transformers.generation.streamers import BaseStreamer

from serve_apps.args import Vlm3rArgs
from vlm3r_core import inference
from vlm3r_core.inference import Question, VideoContext, generation_inputs
from vlm3r_core.video import VideoTooLongError, read_video
from vlm3r_core.vlm import FramePixels, VideoFeatures, Vlm3rForConditionalGeneration, Vlm3rProcessor

VideoLimitError = VideoTooLongError  # over the frame-count or duration limit of the service

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
        self.num_frames = self.model.config.num_frames
        self.cache = TokenCache(args.token_cache_entries)
        self._inflight: dict[str, asyncio.Future] = {}
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
        decoded = await asyncio.to_thread(
            read_video, video, self.num_frames, self.args.max_video_frames, name
        )
        if decoded.duration_s > self.args.max_video_duration_s:
            raise VideoLimitError(
                f"{name}: {decoded.duration_s:.1f} s long, more than the limit of {self.args.max_video_duration_s} s"
            )
        pixels = await asyncio.to_thread(
            self.processor.preprocess_frames, [decoded.frames]
        )  # (1, T, 3, S, S)
        features = await self._encode_batch(pixels)
        encoded = EncodedVideo(
            features=features,
            timestamps=tuple(float(t) for t in decoded.timestamps),
            duration_s=float(decoded.duration_s),
        )
        self.cache.put(key, encoded)
        self._stats.videos_encoded += 1
        return encoded

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.01)
    async def _encode_batch(self, pixels: list[FramePixels]) -> list[VideoFeatures]:
        """Runs the frozen encoders once for the videos of concurrent requests."""
        self._stats.batches += 1
        self._stats.largest_batch = max(self._stats.largest_batch, len(pixels))
        return await asyncio.to_thread(self._run_encoders, pixels)

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
    """Decoding progress of one request in a generation batch."""

    max_new_tokens: int
    prompt_tokens: int
    ids: list[int] = field(default_factory=list)
    emitted: str = ""
    finished: bool = False


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
        self.stop_ids = {self.processor.eos_token_id, self.processor.pad_token_id}
        self._generate_batch.set_max_batch_size(args.lm_batch_size)

    async def generate(self, request: GenerationRequest, video: EncodedVideo) -> GenerationOutput:
        """The whole answer."""
        text, last = [], None
        async for out in self._generate_batch((request, video)):
            text.append(out.text)
            last = out
        return GenerationOutput("".join(text), last.finish_reason, last.prompt_tokens, last.completion_tokens)

    async def generate_stream(
        self, request: GenerationRequest, video: EncodedVideo
    ) -> AsyncIterator[GenerationOutput]:
        """The answer as it is generated (call with ``handle.options(stream=True)``)."""
        async for out in self._generate_batch((request, video)):
            yield out

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def _generate_batch(
        self, items: list[tuple[GenerationRequest, EncodedVideo]]
    ) -> AsyncIterator[list]:
        """Generates for concurrent requests together; yields, per step, one output per request
        (``StopIteration`` once a request is done)."""
        inputs = generation_inputs(
            self.model, self.processor, [Question(req.question, req.options) for req, _ in items], [v for _, v in items]
        )
        rows = [_RowState(req.max_new_tokens, n) for (req, _), n in zip(items, inputs.prompt_tokens, strict=True)]
        loop, queue, errors = asyncio.get_running_loop(), asyncio.Queue(), []
        max_new_tokens = max(r.max_new_tokens for r in rows)
        worker = threading.Thread(
            target=self._run_generate,
            args=(inputs, max_new_tokens, _StepStreamer(loop, queue), errors),
            daemon=True,
        )
        worker.start()
        while (step := await queue.get()) is not None:
            yield [self._advance(row, token) for row, token in zip(rows, step, strict=True)]
        worker.join()
        if errors:
            raise errors[0]
        yield [self._finish(row) for row in rows]

    def _run_generate(self, inputs, max_new_tokens: int, streamer: _StepStreamer, errors: list) -> None:
        """Runs ``inference.generate`` in a worker thread; each step goes to ``streamer``, a failure to ``errors``."""
        try:
            inference.generate(self.model, inputs, max_new_tokens, streamer=streamer)
        except Exception as e:  # raised again on the event loop, for every request of the batch
            errors.append(e)
            streamer.end()

    def _advance(self, row: _RowState, token: int) -> GenerationOutput | type[StopIteration]:
        """Adds one generated token to a row; returns the new text (or StopIteration when done)."""
        if row.finished:
            return StopIteration
        if token in self.stop_ids:
            row.finished = True
            return self._output(row, "stop")
        row.ids.append(token)
        if len(row.ids) >= row.max_new_tokens:
            row.finished = True
            return self._output(row, "length")
        return self._output(row, None)

    def _finish(self, row: _RowState) -> GenerationOutput | type[StopIteration]:
        if row.finished:
            return StopIteration
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
