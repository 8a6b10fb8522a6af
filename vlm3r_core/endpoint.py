"""Answering benchmark questions through any OpenAI-compatible chat endpoint.

``jobs/evaluate.py --model openai:<base_url>#<model_name>`` evaluates whatever answers at
``<base_url>/chat/completions``: our own Serve app, a vLLM or SGLang server, a hosted API. The
endpoint gets the video in one of two forms (:class:`EndpointConfig`):

- ``frames``: the video's frames sampled exactly as our model samples them
  (``numpy.linspace(0, N - 1, K, dtype=int)``, :func:`vlm3r_core.video.read_video`), each a JPEG
  ``image_url`` part: the form every vision chat API accepts;
- ``video``: the whole file as one base64 ``video_url`` data URL: the form our Serve app accepts
  (it samples the frames itself, with the served model's frame count and prompt).

and the question as the official evaluation writes it (pre-prompt, question, options, answer
instruction: :func:`vlm3r_core.prompting.format_question`) or, for servers that build the prompt
themselves (ours), the question and its ``Options:`` lines only. Answers are decoded greedily
(``temperature=0``) with the run's ``max_new_tokens``.

Requests run on a thread pool (``concurrency`` in flight); a connection error, a timeout, 429 or
a 5xx is retried with exponential backoff (honouring ``Retry-After``), any other HTTP error fails
the question at once with the status and the server's message. Answers are yielded as they
arrive, so :func:`vlm3r_core.evaluation.run_evaluation` records each one and an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Literal

from vlm3r_core import storage
from vlm3r_core.ledger import error_reason
from vlm3r_core.prompting import format_question
from vlm3r_core.video import read_video

__all__ = ["ENDPOINT_PREFIX", "EndpointAnswerer", "EndpointConfig", "parse_endpoint"]

ENDPOINT_PREFIX = "openai:"
MAX_BACKOFF_S = 60.0
_VIDEO_TYPES = {"mp4": "video/mp4", "mov": "video/quicktime", "webm": "video/webm", "mkv": "video/x-matroska",
                "avi": "video/x-msvideo"}  # fmt: skip


@dataclass(frozen=True)
class EndpointConfig:
    """How an OpenAI-compatible endpoint is asked (``--model openai:<base_url>#<model_name>``).

    Args:
        input: ``frames``: the sampled frames as JPEG ``image_url`` parts (vLLM, hosted vision
            APIs); ``video``: the whole video as a base64 ``video_url`` data URL (our Serve app).
        prompt: ``official``: the full benchmark text (pre-prompt, question, options, answer
            instruction) as the official evaluation sends it; ``question``: the question and its
            ``Options:`` lines only, for servers that build the prompt themselves (our Serve app).
        num_frames: frames sampled per video in ``frames`` mode (32: VSI-Bench's protocol).
        concurrency: requests in flight at once.
        retries: retries of a request that failed with a connection error, a timeout, 429 or a 5xx,
            waiting backoff_s, then twice as long each time (at most 60 s).
        backoff_s: the first wait before a retry, in seconds.
        timeout_s: the limit of one request, in seconds.
        api_key_env: environment variable with the API key (sent as ``Authorization: Bearer``).
        jpeg_quality: JPEG quality of the frames sent in ``frames`` mode.
    """

    input: Literal["frames", "video"] = field(default="frames", metadata={"flag": "--endpoint-input"})
    prompt: Literal["official", "question"] = field(default="official", metadata={"flag": "--endpoint-prompt"})
    num_frames: int = field(default=32, metadata={"flag": "--endpoint-frames"})
    concurrency: int = field(default=4, metadata={"flag": "--endpoint-concurrency"})
    retries: int = field(default=5, metadata={"flag": "--endpoint-retries"})
    backoff_s: float = field(default=1.0, metadata={"flag": "--endpoint-backoff-s"})
    timeout_s: float = field(default=300.0, metadata={"flag": "--endpoint-timeout-s"})
    api_key_env: str = field(default="OPENAI_API_KEY", metadata={"flag": "--endpoint-api-key-env"})
    jpeg_quality: int = field(default=90, metadata={"flag": "--endpoint-jpeg-quality"})

    def __post_init__(self):
        for name in ("num_frames", "concurrency"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.retries < 0 or self.backoff_s < 0 or self.timeout_s <= 0:
            raise ValueError("retries and backoff_s must be >= 0 and timeout_s > 0")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")


def parse_endpoint(model: str) -> tuple[str, str]:
    """``openai:<base_url>#<model_name>`` -> ``(base_url, model_name)``.

    Raises:
        ValueError: not of that form (the message shows the form and an example).
    """
    spec = model[len(ENDPOINT_PREFIX) :] if model.startswith(ENDPOINT_PREFIX) else ""
    base_url, sep, name = spec.rpartition("#")
    if not model.startswith(ENDPOINT_PREFIX) or not sep or not name or "://" not in base_url:
        raise ValueError(
            f"{model!r} is not an endpoint: write openai:<base_url>#<model_name>, "
            "e.g. openai:http://127.0.0.1:8000/v1#vlm3r"
        )
    return base_url, name


def _jpeg_data_url(frame, quality: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _video_data_url(uri: str) -> str:
    mime = _VIDEO_TYPES.get(uri.rsplit(".", 1)[-1].lower(), "video/mp4")
    return f"data:{mime};base64," + base64.b64encode(storage.read_bytes(uri)).decode()


class _Failure(Exception):
    """A question that cannot be answered; the message is the reason recorded for it."""


class EndpointAnswerer:
    """Answers benchmark rows (:class:`vlm3r_core.evaluation.BenchmarkRow`) through an endpoint.

    Called with rows, yields ``{"id", "video_id", "prediction", "error"}`` per row as answers
    arrive (the ``AnswerFn`` of :func:`vlm3r_core.evaluation.run_evaluation`).

    Args:
        model: ``openai:<base_url>#<model_name>``.
        config: how the endpoint is asked.
        max_new_tokens: ``max_tokens`` of every request.
        blind: send the question text only (no frames, no video).
        client: an ``openai.OpenAI`` client to use instead of one made from ``model`` (tests).
    """

    def __init__(self, model: str, config: EndpointConfig = EndpointConfig(), max_new_tokens: int = 16,
                 blind: bool = False, client: Any = None):  # fmt: skip
        self.base_url, self.model_name = parse_endpoint(model)
        self.config = config
        self.max_new_tokens = max_new_tokens
        self.blind = blind
        if client is None:
            from openai import OpenAI

            client = OpenAI(base_url=self.base_url, api_key=os.environ.get(config.api_key_env) or "none",
                            max_retries=0, timeout=config.timeout_s)  # fmt: skip
        self.client = client

    # What is sent -----------------------------------------------------------------------------

    def media(self, video: str) -> list[dict]:
        """The content parts that carry a video (none when blind)."""
        if self.blind:
            return []
        if self.config.input == "video":
            return [{"type": "video_url", "video_url": {"url": _video_data_url(video)}}]
        decoded = read_video(video, num_samples=self.config.num_frames)
        quality = self.config.jpeg_quality
        return [{"type": "image_url", "image_url": {"url": _jpeg_data_url(f, quality)}} for f in decoded.frames]

    def text(self, row) -> str:
        """The question as sent: the official benchmark text, or question and ``Options:`` lines."""
        if self.config.prompt == "official":
            return format_question(row.question, row.options)
        return "\n".join([row.question, "Options:", *row.options]) if row.options else row.question

    # Asking -----------------------------------------------------------------------------------

    def ask(self, row, media: list[dict]) -> str:
        """One chat request, retried on transient failures; the answer text.

        Raises:
            _Failure: an HTTP error that is not transient, or transient ones past ``retries``.
        """
        import openai

        messages = [{"role": "user", "content": [*media, {"type": "text", "text": self.text(row)}]}]
        attempt = 0
        while True:
            try:
                response = self.client.chat.completions.create(
                    model=self.model_name, messages=messages, max_tokens=self.max_new_tokens, temperature=0
                )
                return response.choices[0].message.content or ""
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
                if attempt >= self.config.retries:
                    raise _Failure(f"{_describe(e)} (gave up after {attempt} retries)") from None
                wait_s = min(self.config.backoff_s * 2**attempt, MAX_BACKOFF_S)
                time.sleep(max(wait_s, _retry_after(e)))
                attempt += 1
            except openai.APIStatusError as e:
                raise _Failure(_describe(e)) from None

    def _answer(self, row, media: Future) -> dict:
        result = {"id": row.id, "video_id": row.video_id, "prediction": None, "error": None}
        try:
            result["prediction"] = self.ask(row, media.result())
        except _Failure as e:
            result["error"] = f"{self.base_url}: {e}"
        except (OSError, ValueError) as e:  # the video could not be read or decoded
            result["error"] = error_reason(e)
        return result

    def __call__(self, rows: Sequence) -> Iterator[dict]:
        by_video: dict[str, list] = {}
        for row in rows:
            by_video.setdefault(row.video, []).append(row)
        limit = 4 * self.config.concurrency  # questions submitted ahead of the answers
        with ThreadPoolExecutor(self.config.concurrency, thread_name_prefix="endpoint") as pool, \
                ThreadPoolExecutor(2, thread_name_prefix="endpoint-media") as media_pool:  # fmt: skip
            pending: set[Future] = set()
            for video, group in by_video.items():
                media = media_pool.submit(self.media, video)  # once per video, shared by its questions
                for row in group:
                    while len(pending) >= limit:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        yield from (f.result() for f in done)
                    pending.add(pool.submit(self._answer, row, media))
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)


def _describe(e: Exception) -> str:
    """``HTTP 422 (undecodable_video): <message>`` or the exception's class and text."""
    status = getattr(e, "status_code", None)
    if status is None:
        return f"{type(e).__name__}: {e}"
    body = getattr(e, "body", None)
    error = body.get("error", body) if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return f"HTTP {status}{f' ({code})' if code else ''}: {message or e}"


def _retry_after(e: Exception) -> float:
    """Seconds a 429/503 asks to wait (``Retry-After``), else 0."""
    response = getattr(e, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return min(float(value), MAX_BACKOFF_S) if value else 0.0
    except ValueError:
        return 0.0
