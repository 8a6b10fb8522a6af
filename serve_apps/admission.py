"""Admission control of the VLM-3R service, without Ray: every limit of ``Vlm3rArgs`` checked
before any decode or model work, from what is cheap to know.

The ingress (``serve_apps/api.py``) runs these checks in order; each raises
:class:`~serve_apps.openai_protocol.ApiError` with a 4xx (or 503) whose message names the limit
and the value:

- :func:`check_headers`: header bytes (431), before the API key is even looked at.
- :class:`BodyBudget`: request bodies one ingress replica holds at once (503 + Retry-After).
- :meth:`Admission.check_text`: lettered options, reserved tokens and question tokens, counted
  with the model's own tokenizer on a bounded prefix (400).
- :meth:`Admission.check_video`: the container sniffed from its first bytes (415), then its
  metadata read by :func:`vlm3r_core.video.probe_video` without decoding a frame: codec (415),
  pixels per frame, frame count and duration (413), unreadable (422).
- :meth:`Admission.check_prompt`: the whole prompt (system prompt, frame times, question, video
  tokens) against the model's context less ``max_tokens`` (400), with the frame times the decoder
  will sample (:func:`vlm3r_core.inference.prompt_length`).
"""

import threading
from collections.abc import Iterable

from serve_apps.args import Vlm3rArgs
from serve_apps.openai_protocol import ApiError, Query
from vlm3r_core import prompting
from vlm3r_core.inference import Question, prompt_length
from vlm3r_core.video import VideoDecodeError, VideoProbe, probe_video, sniff_container
from vlm3r_core.vlm import Vlm3rProcessor

TEXT_PARAM = "messages[0].content"  # where the question lives in the request

# What some common non-video files start with, to say what was sent instead of a video.
_NOT_VIDEO = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"#EXTM3U": "an HLS playlist",
    b"PK\x03\x04": "a zip archive",
}


def check_headers(headers: Iterable[tuple[bytes, bytes]], max_bytes: int) -> None:
    """431 when the request's header names and values add up to more than ``max_bytes``."""
    size = sum(len(name) + len(value) for name, value in headers)
    if size > max_bytes:
        raise ApiError(
            431,
            f"request headers are {size} bytes, more than the limit of {max_bytes}",
            "headers_too_large",
        )


class BodyBudget:
    """Bytes of request bodies one ingress replica holds at once.

    A request reserves its ``Content-Length`` (the largest allowed body when it has none) before
    its body is read and releases it when it is answered; a reservation past the budget is a 503
    with ``Retry-After``, so many large uploads at once cannot exhaust the replica's memory.
    """

    def __init__(self, max_bytes: int, retry_after_s: float = 1.0):
        self.max_bytes, self.retry_after_s = max_bytes, retry_after_s
        self.held = 0

    def reserve(self, size: int) -> int:
        if self.held + size > self.max_bytes:
            raise ApiError(
                503,
                f"the server holds {self.held} bytes of request bodies; this {size}-byte request "
                f"would pass the limit of {self.max_bytes} (max_inflight_body_bytes); retry later",
                "overloaded",
                retry_after=self.retry_after_s,
            )
        self.held += size
        return size

    def release(self, size: int) -> None:
        self.held = max(0, self.held - size)


class Admission:
    """The limits that need the model: its tokenizer, frame count and context length.

    Args:
        args: the service settings (limits).
        processor: the served model's processor (config and tokenizer; no weights needed).
    """

    def __init__(self, args: Vlm3rArgs, processor: Vlm3rProcessor):
        self.args, self.processor = args, processor
        self.config = processor.config
        self.context_tokens = int(self.config.text["max_position_embeddings"])
        tokenizer = processor.tokenizer
        special = {t.content for t in tokenizer.added_tokens_decoder.values() if t.special}
        self.reserved = tuple(sorted(special | {prompting.VIDEO_PLACEHOLDER, prompting.IM_START, prompting.IM_END}))
        # No ordinary token is longer than this many characters, so a text prefix of
        # (limit + 1) x this length holds more than ``limit`` tokens whenever the text does.
        self.max_token_chars = max(len(t) for t in tokenizer.get_vocab() if t not in special)
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer is not safe to share between threads

    # Text ------------------------------------------------------------------------------------------

    def check_text(self, query: Query) -> int:
        """Options, reserved tokens and question length; returns the question's token count."""
        if len(query.options) > self.args.max_options:
            raise ApiError(
                400,
                f"{TEXT_PARAM}: {len(query.options)} options, more than the limit of {self.args.max_options}",
                "too_many_options",
                param=TEXT_PARAM,
            )
        text = "\n".join((query.question, *query.options))
        limit = self.args.max_question_tokens
        prefix = text[: (limit + 1) * self.max_token_chars]
        for token in self.reserved:
            if token in prefix:
                raise ApiError(
                    400,
                    f"{TEXT_PARAM}: the question holds the reserved token {token!r}",
                    "invalid_value",
                    param=TEXT_PARAM,
                )
        with self._tokenizer_lock:
            count = len(self.processor.tokenizer.encode(prefix, add_special_tokens=False))
        if count > limit:
            size = f"{count} tokens" if len(prefix) == len(text) else f"more than {limit} tokens ({len(text)} characters)"
            raise ApiError(
                400,
                f"{TEXT_PARAM}: the question is {size}, more than the limit of {limit} (max_question_tokens)",
                "question_too_long",
                param=TEXT_PARAM,
            )
        return count

    # Video -----------------------------------------------------------------------------------------

    def check_video(self, data: bytes, param: str) -> VideoProbe:
        """The container (sniffed), then its metadata against the limits; decodes no frame."""
        if sniff_container(data) is None:
            what = next((name for magic, name in _NOT_VIDEO.items() if data.startswith(magic)), None)
            raise ApiError(
                415,
                f"{param}: the bytes are {what or 'not a video container'}; send an mp4/mov, webm/mkv or avi video",
                "unsupported_media_type",
                param=param,
            )
        try:
            probe = probe_video(data, name=param)
        except VideoDecodeError as e:
            raise ApiError(422, str(e), "undecodable_video", param=param) from None
        args = self.args
        if probe.codec not in args.video_codecs:
            raise ApiError(
                415,
                f"{param}: video codec {probe.codec!r} is not accepted; use one of {list(args.video_codecs)}",
                "unsupported_video_codec",
                param=param,
            )
        if probe.width <= 0 or probe.height <= 0 or probe.num_frames <= 0:
            raise ApiError(
                422,
                f"{param}: the container reports {probe.width}x{probe.height} pixels and {probe.num_frames} frames",
                "undecodable_video",
                param=param,
            )
        if probe.pixels > args.max_video_pixels:
            raise ApiError(
                413,
                f"{param}: frames are {probe.width}x{probe.height} = {probe.pixels} pixels, more than the "
                f"limit of {args.max_video_pixels} (max_video_pixels)",
                "video_resolution_too_large",
                param=param,
            )
        if probe.num_frames > args.max_video_frames:
            raise ApiError(
                413,
                f"{param}: {probe.num_frames} frames, more than the limit of {args.max_video_frames}",
                "video_too_long",
                param=param,
            )
        if probe.duration_s > args.max_video_duration_s:
            raise ApiError(
                413,
                f"{param}: {probe.duration_s:.1f} s long, more than the limit of {args.max_video_duration_s} s",
                "video_too_long",
                param=param,
            )
        return probe

    # Prompt ----------------------------------------------------------------------------------------

    def check_prompt(self, query: Query, probe: VideoProbe, max_new_tokens: int) -> int:
        """The prompt the model will see, against its context less ``max_new_tokens``; returns its length."""
        timestamps = tuple(float(t) for t in probe.sampled_timestamps(self.config.num_frames))
        try:
            with self._tokenizer_lock:
                length = prompt_length(
                    self.processor, Question(query.question, query.options), timestamps, probe.duration_s
                )
        except ValueError as e:
            raise ApiError(400, f"{TEXT_PARAM}: {e}", "invalid_value", param=TEXT_PARAM) from None
        if length + max_new_tokens > self.context_tokens:
            raise ApiError(
                400,
                f"the model's context is {self.context_tokens} tokens; the prompt is {length} "
                f"({len(timestamps)} frames x {self.config.tokens_per_frame} video tokens and the text) "
                f"and max_tokens is {max_new_tokens}",
                "context_length_exceeded",
                param=TEXT_PARAM,
            )
        return length
