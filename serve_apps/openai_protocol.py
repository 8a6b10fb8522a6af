"""The OpenAI chat-completions protocol of the VLM-3R service, without Ray: request and response
models, the error type and format, and the parsing of a request into a question and a video source.

The ingress (``serve_apps/api.py``) calls these functions in order; each raises :class:`ApiError`
(answered as ``{"error": {"message", "type", "param", "code"}}`` with its HTTP status). They are
plain functions, tested without a server.
"""

import asyncio
import base64
import binascii
import hmac
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

import pydantic
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from vlm3r_core import storage

# ----------------------------------------------------------------------------------------------
# Errors


class ApiError(Exception):
    """An error answered in the OpenAI format; ``param`` names the offending request field.

    ``retry_after`` (seconds) becomes a ``Retry-After`` header: 429 and 503 carry one, so clients
    (the ``openai`` client among them) know the request may succeed later.
    """

    def __init__(
        self,
        status: int,
        message: str,
        code: str,
        param: str | None = None,
        type: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.retry_after = retry_after

    def response(self) -> JSONResponse:
        body = ErrorResponse(
            error=ErrorInfo(message=self.message, type=self.type, param=self.param, code=self.code)
        )
        headers = {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return JSONResponse(body.model_dump(), status_code=self.status, headers=headers or None)


def shorten(value: Any, limit: int = 40) -> str:
    """``repr``-like text of a request value for an error message, cut to ``limit`` characters
    (a 4,000-digit ``max_tokens`` is not echoed back whole)."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else f"{text[: limit - 12]}... ({len(text)} chars)"


class ErrorInfo(pydantic.BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(pydantic.BaseModel):
    error: ErrorInfo


# ----------------------------------------------------------------------------------------------
# Request models (OpenAI chat format; unknown OpenAI fields such as ``temperature`` are accepted
# and ignored: answers are decoded greedily, as in evaluation)


class MediaUrl(pydantic.BaseModel):
    url: str


class ContentPart(pydantic.BaseModel):
    """One part of a message's content: ``{"type": "text", "text"}`` or ``{"type": "video_url",
    "video_url": {"url"}}``. Other OpenAI part types parse, then get a 415."""

    model_config = pydantic.ConfigDict(extra="allow")
    type: str
    text: str | None = None
    video_url: MediaUrl | None = None


class ChatMessage(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(pydantic.BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow")
    model: str
    messages: list[ChatMessage] = pydantic.Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = pydantic.Field(default=None, ge=1)
    max_completion_tokens: int | None = pydantic.Field(default=None, ge=1)
    n: int = 1


# ----------------------------------------------------------------------------------------------
# Response models


class Usage(pydantic.BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(pydantic.BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(pydantic.BaseModel):
    index: int = 0
    message: AssistantMessage
    finish_reason: Literal["stop", "length"]


class ChatCompletion(pydantic.BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage


class Delta(pydantic.BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(pydantic.BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None


class ChatCompletionChunk(pydantic.BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None


class ModelCard(pydantic.BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vlm3r"


class ModelList(pydantic.BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ----------------------------------------------------------------------------------------------
# Request parsing (plain functions, no Ray)


@dataclass(frozen=True)
class VideoSource:
    """Where the video of a request is: decoded bytes of a data URL, or an allowed URI."""

    param: str  # the request field, e.g. "messages[0].content[1].video_url.url"
    data: bytes | None = None
    uri: str | None = None


@dataclass(frozen=True)
class Query:
    """What a chat request asks: the question (with lettered options for multiple choice)."""

    question: str
    options: tuple[str, ...]
    video: VideoSource


_DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*),(?P<payload>.*)$", re.DOTALL
)
_OPTION_LINE = re.compile(r"^[A-Z]\.\s")


def authorize(authorization: str | None, api_keys: frozenset[str]) -> None:
    """Raises 401 unless ``Authorization: Bearer <key>`` holds one of ``api_keys`` (none: open)."""
    if not api_keys:
        return
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "missing API key: send 'Authorization: Bearer <key>'",
            "invalid_api_key",
            type="authentication_error",
        )
    if not any(hmac.compare_digest(token.encode(), key.encode()) for key in api_keys):
        raise ApiError(401, "invalid API key", "invalid_api_key", type="authentication_error")


def declared_body_bytes(request: Request, max_bytes: int) -> int | None:
    """The request's ``Content-Length`` (None when absent); 400 when it is not a number, 413 above
    ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit() or len(declared) > 18:
        raise ApiError(400, f"Content-Length {shorten(declared)!r} is not a byte count", "invalid_header")
    if int(declared) > max_bytes:
        raise ApiError(
            413,
            f"request body is {int(declared)} bytes, more than the limit of {max_bytes}",
            "body_too_large",
        )
    return int(declared)


async def read_body(request: Request, max_bytes: int, idle_timeout_s: float, total_timeout_s: float) -> bytes:
    """The request body: 413 as soon as it passes ``max_bytes``; 408 when no piece of it arrives
    for ``idle_timeout_s`` or the whole has not arrived after ``total_timeout_s``; 400 when the
    client stops sending before its ``Content-Length``."""
    declared = declared_body_bytes(request, max_bytes)
    deadline = time.monotonic() + total_timeout_s
    chunks, size = [], 0
    stream = request.stream().__aiter__()
    while True:
        wait = min(idle_timeout_s, deadline - time.monotonic())
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(wait, 0.001))
        except StopAsyncIteration:
            break
        except ClientDisconnect:
            raise ApiError(400, f"the client left after {size} bytes of the body", "incomplete_body") from None
        except asyncio.TimeoutError:
            expected = f" of {declared}" if declared is not None else ""
            why = (
                f"the whole body did not arrive within {total_timeout_s} s"
                if time.monotonic() >= deadline
                else f"then nothing for {idle_timeout_s} s"
            )
            raise ApiError(
                408,
                f"request body incomplete: {size}{expected} bytes arrived, {why} (body timeout)",
                "body_timeout",
                type="timeout_error",
            ) from None
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"request body is more than the limit of {max_bytes} bytes", "body_too_large")
        chunks.append(chunk)
    if declared is not None and size != declared:
        raise ApiError(
            400, f"request body is {size} bytes, but Content-Length said {declared}", "incomplete_body"
        )
    return b"".join(chunks)


def _param(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _check_counts(payload: dict, max_messages: int | None, max_content_parts: int | None) -> None:
    """400 for more messages or content parts than allowed, before the rest of the body is validated."""
    messages = payload.get("messages")
    if not isinstance(messages, list):
        return
    if max_messages is not None and len(messages) > max_messages:
        raise ApiError(
            400,
            f"messages: {len(messages)} messages, more than the limit of {max_messages}",
            "too_many_messages",
            param="messages",
        )
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if max_content_parts is not None and isinstance(content, list) and len(content) > max_content_parts:
            raise ApiError(
                400,
                f"messages[{i}].content: {len(content)} parts, more than the limit of {max_content_parts}",
                "too_many_content_parts",
                param=f"messages[{i}].content",
            )


def parse_chat_request(
    body: bytes, max_messages: int | None = None, max_content_parts: int | None = None
) -> ChatCompletionRequest:
    """JSON body -> request model; 400 naming the field for bad JSON, missing or invalid fields.

    Hostile JSON is a 400 too: nesting deeper than the parser's recursion limit, integers longer
    than Python converts (4,300 digits), invalid UTF-8. Types are strict: ``"10"`` is not an
    integer and ``"yes"`` is not a boolean.
    """
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON ({shorten(str(e), 120)})", "invalid_json") from None
    except RecursionError:
        raise ApiError(400, "request body is not valid JSON (nested too deeply)", "invalid_json") from None
    except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise ApiError(400, f"request body is not valid JSON ({shorten(str(e), 120)})", "invalid_json") from None
    if not isinstance(payload, dict):
        raise ApiError(400, "request body must be a JSON object", "invalid_json")
    _check_counts(payload, max_messages, max_content_parts)
    try:
        return ChatCompletionRequest.model_validate(payload, strict=True)
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply", "invalid_json") from None
    except pydantic.ValidationError as e:
        # Report the first error; a union (str | list) reports each branch, keep the list branch.
        errors = e.errors(include_url=False)
        first = next((err for err in errors if "str" not in err["loc"]), errors[0])
        loc = tuple(p for p in first["loc"] if p not in ("str", "list[ContentPart]"))
        param = _param(loc)
        missing = first["type"] == "missing"
        message = f"{param}: field required" if missing else f"{param}: {shorten(first['msg'], 200)}"
        raise ApiError(400, message, "missing_field" if missing else "invalid_value", param=param) from None


def split_options(text: str) -> tuple[str, tuple[str, ...]]:
    """``"<question>\\nOptions:\\nA. x\\nB. y"`` -> ``("<question>", ("A. x", "B. y"))``."""
    lines = text.strip().splitlines()
    if "Options:" not in lines:
        return text.strip(), ()
    at = lines.index("Options:")
    options = tuple(line.strip() for line in lines[at + 1 :] if line.strip())
    if not options or not all(_OPTION_LINE.match(o) for o in options):
        return text.strip(), ()
    return "\n".join(lines[:at]).strip(), options


def extract_query(chat: ChatCompletionRequest, max_video_bytes: int | None = None) -> Query:
    """The one user message -> question text, options and the video source (a data URL is
    decoded here: 413 when it holds more than ``max_video_bytes``)."""
    for i, message in enumerate(chat.messages):
        if message.role != "user":
            raise ApiError(
                400,
                f"messages[{i}]: role {message.role!r} is not supported; send one user message "
                "(the model uses the system prompt it was trained with)",
                "unsupported_role",
                param=f"messages[{i}].role",
            )
    if len(chat.messages) != 1:
        raise ApiError(
            400, f"one user message expected, got {len(chat.messages)}", "invalid_value", param="messages"
        )
    content = chat.messages[0].content
    if not isinstance(content, list):
        raise ApiError(
            400,
            "messages[0].content must be a list of parts with one 'video_url' part",
            "missing_video",
            param="messages[0].content",
        )
    texts: list[str] = []
    videos: list[tuple[int, str]] = []
    for j, part in enumerate(content):
        where = f"messages[0].content[{j}]"
        if part.type == "text":
            if part.text is None:
                raise ApiError(400, f"{where}.text: field required", "missing_field", param=f"{where}.text")
            texts.append(part.text)
        elif part.type == "video_url":
            if part.video_url is None:
                raise ApiError(
                    400, f"{where}.video_url: field required", "missing_field", param=f"{where}.video_url"
                )
            videos.append((j, part.video_url.url))
        else:
            raise ApiError(
                415,
                f"{where}: content part type {part.type!r} is not supported; send the video as a 'video_url' part",
                "unsupported_media_type",
                param=f"{where}.type",
            )
    if len(videos) != 1:
        raise ApiError(
            400,
            f"messages[0].content: one 'video_url' part expected, got {len(videos)}",
            "missing_video",
            param="messages[0].content",
        )
    question, options = split_options("\n".join(texts))
    if not question:
        raise ApiError(
            400,
            "messages[0].content: a 'text' part with the question is required",
            "missing_question",
            param="messages[0].content",
        )
    j, url = videos[0]
    param = f"messages[0].content[{j}].video_url.url"
    if url.startswith("data:"):
        data = decode_data_url(url, param, max_video_bytes)
        return Query(question, options, VideoSource(param=param, data=data))
    return Query(question, options, VideoSource(param=param, uri=url))


def decode_data_url(url: str, param: str, max_bytes: int | None = None) -> bytes:
    """``data:video/<type>;base64,<payload>`` -> bytes; 415 for other media types, 413 when the
    payload would decode to more than ``max_bytes`` (checked before decoding)."""
    match = _DATA_URL.match(url)
    if match is None:
        raise ApiError(400, f"{param}: malformed data URL", "invalid_data_url", param=param)
    mime = (match["mime"] or "text/plain").lower()
    if not mime.startswith("video/"):
        raise ApiError(
            415,
            f"{param}: unsupported media type {mime!r}; send a video (video/mp4, ...)",
            "unsupported_media_type",
            param=param,
        )
    if ";base64" not in match["params"].lower():
        raise ApiError(
            400,
            f"{param}: the data URL must be base64-encoded (data:{mime};base64,...)",
            "invalid_data_url",
            param=param,
        )
    decoded_size = len(match["payload"]) // 4 * 3  # 0-2 bytes more than the data (padding)
    if max_bytes is not None and decoded_size - 2 > max_bytes:
        raise _video_too_large(param, decoded_size, max_bytes, "about ")
    try:
        data = base64.b64decode(match["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(
            400, f"{param}: the data URL payload is not valid base64", "invalid_data_url", param=param
        ) from None
    if not data:
        raise ApiError(400, f"{param}: the data URL holds no bytes", "invalid_data_url", param=param)
    if max_bytes is not None and len(data) > max_bytes:
        raise _video_too_large(param, len(data), max_bytes)
    return data


def _video_too_large(param: str, size: int, max_bytes: int, about: str = "") -> ApiError:
    return ApiError(
        413, f"{param}: the video is {about}{size} bytes, more than the limit of {max_bytes}", "video_too_large", param=param
    )


_URI_SPECIALS = re.compile(r"::|[\x00-\x1f\x7f\\]")  # fsspec chaining, control characters, backslashes


def check_uri_allowed(uri: str, allowed_prefixes: tuple[str, ...], param: str) -> None:
    """403 unless ``uri`` lies under one of the allowed prefixes (no ``..`` segments, no fsspec
    chaining such as ``s3://bucket/videos/a.mp4::http://host/``, no control characters)."""
    if _URI_SPECIALS.search(uri):
        raise ApiError(
            403,
            f"{param}: {shorten(uri, 120)!r} is not a plain URI (chained '::' URIs, control characters "
            "and backslashes are refused)",
            "uri_not_allowed",
            param=param,
        )
    if not allowed_prefixes:
        raise ApiError(
            403,
            f"{param}: this server accepts no video URIs; send the video as a base64 data URL",
            "uri_not_allowed",
            param=param,
        )
    path = uri.split("://", 1)[-1]
    if ".." in path.split("/") or not any(uri.startswith(p) for p in allowed_prefixes):
        raise ApiError(
            403,
            f"{param}: {shorten(uri, 120)!r} is outside the allowed prefixes {list(allowed_prefixes)}",
            "uri_not_allowed",
            param=param,
        )


def fetch_video(uri: str, max_bytes: int, param: str) -> bytes:
    """Reads an allowed video URI through ``vlm3r_core.storage`` (size checked first)."""
    fs, path = storage.filesystem(uri)
    try:
        size = fs.size(path)
    except FileNotFoundError:
        raise ApiError(400, f"{param}: no video at {uri!r}", "video_not_found", param=param) from None
    if size is not None and size > max_bytes:
        raise _video_too_large(param, size, max_bytes)
    data = storage.read_bytes(uri)
    if len(data) > max_bytes:  # a store that did not report the size
        raise _video_too_large(param, len(data), max_bytes)
    return data


def requested_max_tokens(chat: ChatCompletionRequest, default: int, limit: int) -> int:
    """``max_completion_tokens`` or ``max_tokens`` (400 above ``limit``), else ``default``."""
    if chat.n != 1:
        raise ApiError(400, f"n: only n=1 is supported, got {shorten(chat.n)}", "invalid_value", param="n")
    field = "max_completion_tokens" if chat.max_completion_tokens is not None else "max_tokens"
    value = getattr(chat, field)
    if value is None:
        return default
    if value > limit:
        raise ApiError(
            400, f"{field}: {shorten(value)} is more than the limit of {limit}", "invalid_value", param=field
        )
    return value
