"""The HTTP face of the VLM-3R service: an OpenAI-compatible FastAPI ingress.

Routes:

- ``POST /v1/chat/completions``: one user message whose content holds one ``video_url`` part (a
  base64 ``data:video/...`` URL, or a URI under a prefix the server allows, e.g. ``s3://bucket/``)
  and text parts with the question. ``stream: true`` answers with server-sent events
  (``chat.completion.chunk`` objects, then ``data: [DONE]``).
- ``GET /v1/models``: the one served model.
- ``/v1/sessions``: live sessions (``serve_apps/sessions.py``, state in the ``GeometryEncoder``):
  ``POST`` opens one, ``POST /v1/sessions/{id}/frames`` pushes a JPEG/PNG frame (query ``t``,
  ``duration_s``), ``GET``/``DELETE /v1/sessions/{id}``, ``GET .../trajectory`` and ``GET
  .../reconstruction?format=ply|glb``; a chat request asks about one with the video URL
  ``session://<id>``. Requests reach the replica holding the session through Serve's model
  multiplexing (``multiplexed_model_id`` = the session id).
- ``GET /health``: 200 while the ingress is up (no API key needed).
- ``GET /`` redirects to ``GET /demo``, the browser demo page (``serve_apps/static/``, files under
  ``/demo/static/``; no API key needed for the page itself). The page calls, with the API key:
  ``GET /demo/videos`` (the bundled demo videos and their benchmark questions),
  ``GET /demo/videos/file?video=<id>`` (a video's bytes), ``GET /demo/videos/layout?video=<id>``
  (a scene's annotated 3D layout, the viewer's JSON) and ``POST /demo/frames`` (body: a video;
  answers the frames the model samples as JPEG data URLs). See ``serve_apps/demo.py``.

Every error is a 4xx/5xx in the OpenAI error format ``{"error": {"message", "type", "param",
"code"}}``, also for hostile JSON and unexpected failures (never plain text). Requests are admitted
in this order, every check before any decode or model work (``serve_apps/admission.py``), so a
request without a valid API key never reaches a model and a bad request never reaches a replica
that could crash on it or slow others down: header bytes (431), API key (401), body size (413) and
the replica's in-flight body bytes (503), body arrival (408/400), JSON and strict types (400),
message and part counts (400), model name (404), content parts (400/415), question tokens and
options (400), video source (403/413/400), the container sniffed and probed without decoding
(415/422/413 for codec, pixels per frame, frames, duration), the whole prompt against the model's
context (400). Then the ``GeometryEncoder`` decodes and encodes the video and the ``LanguageModel``
answers: 429 when a model deployment's queue is full, 504 past the request timeout, 503 with
Retry-After when a replica died mid-request (Serve starts a new one).

A question written as in the benchmarks, ``<question>\\nOptions:\\nA. ...\\nB. ...``, is a
multiple-choice question: the prompt is built exactly as in evaluation
(``vlm3r_core.prompting.build_user_message`` with the model's ``PromptConfig``).
"""

import asyncio
import dataclasses
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import (
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)
from ray.serve.exceptions import BackPressureError, RayServeException
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_apps.admission import Admission, BodyBudget, check_headers
from serve_apps.args import API_KEYS_ENV, Vlm3rArgs
from serve_apps.demo import DemoSite, static_file
from serve_apps.deployments import (
    ContextLengthError,
    GenerationOutput,
    GenerationRequest,
    PixelsError,
    PromptError,
    ReplicaMemory,
    VideoLimitError,
    VideoResolutionError,
    replica_memory,
)
from serve_apps.openai_protocol import (
    ApiError,
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
    ModelCard,
    ModelList,
    Usage,
    VideoSource,
    authorize,
    check_uri_allowed,
    declared_body_bytes,
    extract_query,
    fetch_video,
    parse_chat_request,
    read_body,
    requested_max_tokens,
    shorten,
)
from serve_apps.sessions import (
    FrameError,
    FrameRateError,
    FrameTimestampError,
    SessionLimitError,
    SessionMovedError,
    SessionNotFoundError,
    SessionStateError,
    owner_of,
)
from vlm3r_core.geometry.reconstruction import ReconstructionConfig
from vlm3r_core.inference import load_processor
from vlm3r_core.video import VideoDecodeError

# No ``from __future__ import annotations`` in this module: FastAPI reads the route annotations
# (``request: Request``) as classes, also through Serve's ingress wrapper.

logger = logging.getLogger("ray.serve")


# ----------------------------------------------------------------------------------------------
# Errors from the deployments


RETRY_AFTER_S = 1.0  # what 429 and 503 answers tell clients to wait


@dataclass(frozen=True)
class IngressStats:
    """One ingress replica: its memory and the request-body bytes it holds now."""

    memory: ReplicaMemory
    body_bytes_held: int


def backend_error(e: BaseException, video_param: str | None = None) -> ApiError:
    """Maps an error raised by a downstream deployment to the HTTP error the client sees.

    ``video_param`` is the request field holding the video (the ``param`` of video errors).
    """
    cause = e
    while isinstance(cause, RayTaskError) and isinstance(cause.cause, BaseException):
        cause = cause.cause
    if isinstance(cause, VideoLimitError):
        return ApiError(413, str(cause), "video_too_long", param=video_param)
    if isinstance(cause, VideoResolutionError):
        return ApiError(413, str(cause), "video_resolution_too_large", param=video_param)
    if isinstance(cause, VideoDecodeError):
        return ApiError(422, str(cause), "undecodable_video", param=video_param)
    if isinstance(cause, PromptError):
        code = "context_length_exceeded" if isinstance(cause, ContextLengthError) else "invalid_prompt"
        return ApiError(400, str(cause), code, param="messages[0].content")
    if isinstance(cause, PixelsError):
        return ApiError(422, str(cause), "invalid_pixels", param=video_param)
    if isinstance(cause, SessionNotFoundError):
        return ApiError(404, str(cause), "session_not_found")
    if isinstance(cause, (SessionLimitError, FrameRateError)):
        code = "too_many_sessions" if isinstance(cause, SessionLimitError) else "rate_limit_exceeded"
        return ApiError(429, str(cause), code, type="rate_limit_error", retry_after=RETRY_AFTER_S)
    if isinstance(cause, FrameTimestampError):
        return ApiError(400, str(cause), "invalid_value", param="t")
    if isinstance(cause, FrameError):
        return ApiError(422, str(cause), "undecodable_frame", param="body")
    if isinstance(cause, SessionStateError):
        return ApiError(409, str(cause), "session_not_ready")
    if isinstance(cause, SessionMovedError):
        return ApiError(503, str(cause), "session_moved", retry_after=RETRY_AFTER_S)
    if isinstance(cause, BackPressureError):  # a model deployment's queue (max_queued_requests) is full
        return ApiError(
            429, f"the service is at capacity ({cause.message}); retry later", "rate_limit_exceeded",
            type="rate_limit_error", retry_after=RETRY_AFTER_S,
        )
    if isinstance(
        cause,
        (RayActorError, WorkerCrashedError, NodeDiedError, ObjectLostError, TaskCancelledError, RayServeException),
    ):  # a replica died or went away mid-request (Serve replaces it), or no replica is up yet
        logger.warning("request lost its replica: %r", cause)
        return ApiError(
            503,
            f"a model replica was lost while serving this request ({type(cause).__name__}); retry",
            "replica_unavailable",
            retry_after=RETRY_AFTER_S,
        )
    logger.error("request failed: %r", e)
    return ApiError(500, f"internal error ({type(cause).__name__})", "internal_error")


# ----------------------------------------------------------------------------------------------
# Live-session request pieces

SESSION_URI = "session://"  # a chat request's video_url naming a live session: session://<id>
_SESSION_ID = re.compile(r"^sess_[0-9a-f]{32}$")
_MESH_TYPES = {"ply": "application/octet-stream", "glb": "model/gltf-binary"}


def _session_id_or_404(session_id: str) -> None:
    """An id this server never makes is not sent to a replica (404 at once)."""
    if not _SESSION_ID.match(session_id):
        raise ApiError(404, f"no session {shorten(session_id)!r}", "session_not_found")


def _session_uri_id(source: VideoSource) -> str | None:
    """The session id of a ``session://<id>`` video URL (404 for a malformed id), else None."""
    if source.uri is None or not source.uri.startswith(SESSION_URI):
        return None
    session_id = source.uri[len(SESSION_URI) :]
    _session_id_or_404(session_id)
    return session_id


def reconstruction_config(request: Request) -> ReconstructionConfig:
    """``confidence`` (>= 1) and ``voxel_size`` (m, 0 keeps every point) from the query; the
    defaults of ``ReconstructionConfig`` for those not given."""
    defaults = ReconstructionConfig()
    confidence, voxel = (_query_seconds(request, name) for name in ("confidence", "voxel_size"))
    try:
        return ReconstructionConfig(
            confidence_threshold=defaults.confidence_threshold if confidence is None else confidence,
            voxel_size_m=defaults.voxel_size_m if voxel is None else voxel,
        )
    except ValueError as e:
        raise ApiError(400, str(e), "invalid_value", param="confidence/voxel_size") from None


def _query_seconds(request: Request, name: str) -> float | None:
    """A float query parameter (None when absent); 400 when it is not a finite number."""
    text = request.query_params.get(name)
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ApiError(400, f"{name}: {shorten(text)!r} is not a finite number", "invalid_value", param=name)
    return value


# ----------------------------------------------------------------------------------------------
# The ingress deployment

async def _limit_header_bytes(request: Request) -> None:
    """Every route: 431 past ``max_header_bytes`` (set on ``api.state`` by the ingress replica)."""
    check_headers(request.scope["headers"], request.app.state.max_header_bytes)


api = FastAPI(
    title="VLM-3R",
    description="Spatial question answering about videos (OpenAI chat format).",
    dependencies=[Depends(_limit_header_bytes)],
)
api.state.max_header_bytes = Vlm3rArgs.model_fields["max_header_bytes"].default


@api.exception_handler(ApiError)
async def _api_error(_: Request, e: ApiError) -> JSONResponse:
    return e.response()


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    return ApiError(e.status_code, str(e.detail), _HTTP_CODES.get(e.status_code, "http_error")).response()


@api.exception_handler(Exception)
async def _unexpected_error(_: Request, e: Exception) -> JSONResponse:
    """Anything else is a JSON 500 too (Starlette would answer plain text)."""
    logger.error("unexpected error: %r", e)
    return ApiError(500, f"internal error ({type(e).__name__})", "internal_error").response()


@serve.deployment(
    ray_actor_options={"num_cpus": 0.25},
    autoscaling_config={"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16},
    max_ongoing_requests=64,
)
@serve.ingress(api)
class Vlm3rIngress:
    """Checks and parses requests, fetches videos, and composes the two model deployments."""

    def __init__(self, args: Vlm3rArgs, encoder: DeploymentHandle, language_model: DeploymentHandle):
        self.args = args
        self.encoder = encoder
        self.language_model = language_model
        env_keys = [k.strip() for k in os.environ.get(API_KEYS_ENV, "").split(",") if k.strip()]
        self.api_keys = frozenset([*args.api_keys, *env_keys])
        self.allowed_prefixes = tuple(p if p.endswith("/") else p + "/" for p in args.allowed_uri_prefixes)
        self.created = int(time.time())
        self.demo = DemoSite(args)
        # The model's tokenizer and config (no weights): question and prompt lengths are counted here.
        self.admission = Admission(args, load_processor(args.model))
        api.state.max_header_bytes = args.max_header_bytes
        self.body_budget = BodyBudget(args.max_inflight_body_bytes, RETRY_AFTER_S)

    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict[str, Any]:
        authorize(request.headers.get("authorization"), self.api_keys)
        return ModelList(data=[ModelCard(id=self.args.served_model_name, created=self.created)]).model_dump()

    # ---- the browser demo (serve_apps/demo.py, serve_apps/static/) ---------------------------

    @api.get("/", include_in_schema=False)
    async def root(self, request: Request) -> RedirectResponse:
        return RedirectResponse(request.url_for("demo_page"))

    @api.get("/demo", include_in_schema=False)
    async def demo_page(self) -> HTMLResponse:
        return HTMLResponse(static_file("index.html")[0], headers={"Cache-Control": "no-cache"})

    @api.get("/demo/static/{name}", include_in_schema=False)
    async def demo_static(self, name: str) -> Response:
        found = static_file(name)
        if found is None:
            raise ApiError(404, f"the demo page has no file {name!r}", "not_found")
        return Response(found[0], media_type=found[1], headers={"Cache-Control": "no-cache"})

    @api.get("/demo/videos")
    async def demo_videos(self, request: Request) -> dict[str, Any]:
        authorize(request.headers.get("authorization"), self.api_keys)
        return await asyncio.to_thread(self.demo.listing)

    @api.get("/demo/videos/file")
    async def demo_video_file(self, request: Request, video: str) -> Response:
        authorize(request.headers.get("authorization"), self.api_keys)
        data, media_type = await asyncio.to_thread(self.demo.video_file, video)
        return Response(data, media_type=media_type)

    @api.get("/demo/videos/layout")
    async def demo_video_layout(self, request: Request, video: str) -> JSONResponse:
        authorize(request.headers.get("authorization"), self.api_keys)
        return JSONResponse(await asyncio.to_thread(self.demo.layout, video))

    @api.post("/demo/frames")
    async def demo_frames(self, request: Request) -> dict[str, Any]:
        authorize(request.headers.get("authorization"), self.api_keys)
        video = await self._posted_video(request)
        try:
            return await asyncio.to_thread(self.demo.frames, video)
        except ApiError:
            raise
        except Exception as e:
            raise backend_error(e) from None

    async def _posted_video(self, request: Request) -> bytes:
        """A demo route's body: a video, admitted by the API's limits before any decoding (400 when empty)."""
        args = self.args
        video = await read_body(
            request, args.max_video_bytes, args.body_timeout_s, max(args.request_timeout_s, args.body_timeout_s)
        )
        if not video:
            raise ApiError(400, "the request body must be a video", "missing_video")
        await asyncio.to_thread(self.admission.check_video, video, "body")
        return video

    @api.post("/demo/reconstruction")
    async def demo_reconstruction(self, request: Request) -> JSONResponse:
        """The body: a video; the answer: its CUT3R point cloud and camera path in the viewer's
        JSON form, from the frames the model samples (``session_points_per_keyframe`` pixels of
        each). Query: ``confidence``, ``voxel_size`` as for a session's reconstruction. 409 ``session_not_ready`` when the service runs CUT3R without
        point heads, or no point reaches the confidence."""
        authorize(request.headers.get("authorization"), self.api_keys)
        args = self.args
        # as many points per frame as a live session keeps per keyframe: a bounded answer
        config = dataclasses.replace(reconstruction_config(request), max_points_per_frame=args.session_points_per_keyframe)
        video = await self._posted_video(request)
        response = self.encoder.reconstruct.remote(video, "the posted video", config)
        try:
            cloud = await asyncio.wait_for(response, args.request_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise self._timeout() from None
        except ApiError:
            raise
        except Exception as e:
            raise backend_error(e, "body") from None
        return JSONResponse(cloud)

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(self, request: Request) -> JSONResponse | StreamingResponse:
        args = self.args
        owner = self._owner(request)
        declared = declared_body_bytes(request, args.max_body_bytes)
        held = self.body_budget.reserve(args.max_body_bytes if declared is None else declared)
        try:
            return await self._chat_completion(request, owner)
        finally:
            self.body_budget.release(held)

    # ---- live sessions (serve_apps/sessions.py; state in the GeometryEncoder) ----------------

    @api.post("/v1/sessions", status_code=201)
    async def open_session(self, request: Request) -> JSONResponse:
        owner = self._owner(request)
        session_id = f"sess_{uuid.uuid4().hex}"
        return JSONResponse(await self._session_call("open_session", session_id, owner), status_code=201)

    @api.get("/v1/sessions/{session_id}")
    async def get_session(self, request: Request, session_id: str) -> JSONResponse:
        owner = self._owner(request)
        return JSONResponse(await self._session_call("session_info", session_id, owner))

    @api.delete("/v1/sessions/{session_id}")
    async def close_session(self, request: Request, session_id: str) -> JSONResponse:
        owner = self._owner(request)
        await self._session_call("close_session", session_id, owner)
        return JSONResponse({"id": session_id, "object": "session", "deleted": True})

    @api.post("/v1/sessions/{session_id}/frames")
    async def push_frame(self, request: Request, session_id: str) -> JSONResponse:
        """Body: one JPEG or PNG frame. Query: ``t`` (seconds in the stream; default: since the
        open) and ``duration_s`` (the stream's length so far, when the client knows it)."""
        args = self.args
        owner = self._owner(request)
        t, duration_s = (_query_seconds(request, name) for name in ("t", "duration_s"))
        _session_id_or_404(session_id)
        declared = declared_body_bytes(request, args.max_frame_bytes)
        held = self.body_budget.reserve(args.max_frame_bytes if declared is None else declared)
        try:
            image = await read_body(request, args.max_frame_bytes, args.body_timeout_s, args.body_timeout_s)
            await asyncio.to_thread(self.admission.check_frame, image)
            return JSONResponse(await self._session_call("push_frame", session_id, owner, image, t, duration_s))
        finally:
            self.body_budget.release(held)

    @api.get("/v1/sessions/{session_id}/trajectory")
    async def session_trajectory(self, request: Request, session_id: str) -> JSONResponse:
        owner = self._owner(request)
        return JSONResponse(await self._session_call("session_trajectory", session_id, owner))

    @api.get("/v1/sessions/{session_id}/reconstruction")
    async def session_reconstruction(self, request: Request, session_id: str) -> Response:
        """Query: ``format`` ply (default) or glb; ``confidence`` (>= 1) and ``voxel_size`` (m, 0 keeps
        every point) as in ``ReconstructionConfig``."""
        owner = self._owner(request)
        fmt = request.query_params.get("format", "ply")
        if fmt not in _MESH_TYPES:
            raise ApiError(400, f"format: {shorten(fmt)!r} is not one of ply, glb", "invalid_value", param="format")
        config = reconstruction_config(request)
        data = await self._session_call("session_reconstruction", session_id, owner, fmt, config)
        return Response(
            data,
            media_type=_MESH_TYPES[fmt],
            headers={"Content-Disposition": f'attachment; filename="{session_id}.{fmt}"'},
        )

    def _owner(self, request: Request) -> str:
        """401 without a valid key; else the owner of the sessions this key opens (``owner_of``)."""
        return owner_of(authorize(request.headers.get("authorization"), self.api_keys))

    async def _session_call(self, method: str, session_id: str, owner: str, *args):
        """One call to the GeometryEncoder replica holding the session (Serve routes by
        ``multiplexed_model_id``), its errors as API errors."""
        _session_id_or_404(session_id)
        handle = self.encoder.options(multiplexed_model_id=session_id)
        response = getattr(handle, method).remote(session_id, owner, *args)
        try:
            return await asyncio.wait_for(response, self.args.request_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise self._timeout() from None
        except ApiError:
            raise
        except Exception as e:
            raise backend_error(e) from None

    async def stats(self) -> IngressStats:
        """This replica's memory and request bodies held (through a handle: ``ingress.stats.remote()``)."""
        return IngressStats(memory=replica_memory(), body_bytes_held=self.body_budget.held)

    async def _chat_completion(self, request: Request, owner: str) -> JSONResponse | StreamingResponse:
        args = self.args
        body = await read_body(
            request, args.max_body_bytes, args.body_timeout_s, max(args.request_timeout_s, args.body_timeout_s)
        )
        chat = parse_chat_request(body, args.max_messages, args.max_content_parts)
        del body
        if chat.model != args.served_model_name:
            raise ApiError(
                404,
                f"model {shorten(chat.model)!r} does not exist; this server serves {args.served_model_name!r}",
                "model_not_found",
                param="model",
            )
        max_new_tokens = requested_max_tokens(chat, args.default_max_tokens, args.max_tokens_limit)
        query = extract_query(chat, args.max_video_bytes)
        stream_requested = chat.stream
        include_usage = chat.stream_options is not None and chat.stream_options.include_usage
        del chat  # the parsed body, video data URL included
        await asyncio.to_thread(self.admission.check_text, query)
        generation = GenerationRequest(
            question=query.question, options=query.options, max_new_tokens=max_new_tokens
        )
        session_id = _session_uri_id(query.video)
        if session_id is not None:  # a live session: what it has seen so far; the LM checks the prompt
            encoded = self.encoder.options(multiplexed_model_id=session_id).session_context.remote(session_id, owner)
        else:
            video = await self._video_bytes(query.video)
            probe = await asyncio.to_thread(self.admission.check_video, video, query.video.param)
            await asyncio.to_thread(self.admission.check_prompt, query, probe, max_new_tokens)
            encoded = self.encoder.encode.remote(video, query.video.param)
        # chained: features go encoder -> LM directly
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if stream_requested:
            stream = self.language_model.options(stream=True).generate_stream.remote(generation, encoded)
            return await self._stream_response(stream, completion_id, created, include_usage, query.video.param)
        response = self.language_model.generate.remote(generation, encoded)
        try:
            out: GenerationOutput = await asyncio.wait_for(response, args.request_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise self._timeout() from None
        except asyncio.CancelledError:  # the client left: stop the generation it started
            response.cancel()
            raise
        except ApiError:
            raise
        except Exception as e:
            raise backend_error(e, query.video.param) from None
        completion = ChatCompletion(
            id=completion_id,
            created=created,
            model=args.served_model_name,
            choices=[Choice(message=AssistantMessage(content=out.text), finish_reason=out.finish_reason)],
            usage=Usage(
                prompt_tokens=out.prompt_tokens,
                completion_tokens=out.completion_tokens,
                total_tokens=out.prompt_tokens + out.completion_tokens,
            ),
        )
        return JSONResponse(completion.model_dump(exclude_none=True))

    async def _video_bytes(self, source: VideoSource) -> bytes:
        if source.data is not None:  # a data URL, decoded and size-checked by extract_query
            return source.data
        check_uri_allowed(source.uri, self.allowed_prefixes, source.param)
        try:
            return await asyncio.to_thread(fetch_video, source.uri, self.args.max_video_bytes, source.param)
        except ApiError:
            raise
        except OSError as e:
            raise ApiError(
                400,
                f"{source.param}: cannot read {source.uri!r} ({e})",
                "video_not_found",
                param=source.param,
            ) from None

    def _timeout(self) -> ApiError:
        return ApiError(
            504,
            f"no answer within the request timeout of {self.args.request_timeout_s} s",
            "timeout",
            type="timeout_error",
        )

    async def _stream_response(
        self, stream, completion_id: str, created: int, include_usage: bool, video_param: str
    ) -> StreamingResponse:
        """Waits for the first output (so errors before any token are plain 4xx/5xx), then streams
        ``chat.completion.chunk`` events; an error after the first event ends the stream with an
        ``{"error": ...}`` event. A client that disconnects cancels the generation (its row stops)."""
        deadline = time.monotonic() + self.args.request_timeout_s

        async def next_output() -> GenerationOutput | None:
            try:
                return await asyncio.wait_for(stream.__anext__(), max(deadline - time.monotonic(), 0.001))
            except StopAsyncIteration:
                return None
            except asyncio.TimeoutError:
                stream.cancel()
                raise self._timeout() from None
            except asyncio.CancelledError:
                stream.cancel()
                raise
            except Exception as e:
                raise backend_error(e, video_param) from None

        def event(delta: Delta | None, finish_reason: str | None = None, usage: Usage | None = None) -> str:
            choices = [] if delta is None else [ChunkChoice(delta=delta, finish_reason=finish_reason)]
            chunk = ChatCompletionChunk(
                id=completion_id,
                created=created,
                model=self.args.served_model_name,
                choices=choices,
                usage=usage,
            )
            return f"data: {json.dumps(chunk.model_dump(exclude_none=True))}\n\n"

        first = await next_output()

        async def events() -> AsyncIterator[str]:
            out, last = first, first
            try:
                yield event(Delta(role="assistant", content=""))
                while out is not None:
                    last = out
                    if out.text:
                        yield event(Delta(content=out.text))
                    out = await next_output()
            except ApiError as e:
                yield f"data: {e.response().body.decode()}\n\n"
                return
            finally:
                if out is not None:  # the client left (or the stream failed) before the end
                    stream.cancel()
            yield event(Delta(), finish_reason=last.finish_reason or "stop")
            if include_usage:
                total = last.prompt_tokens + last.completion_tokens
                yield event(
                    None,
                    usage=Usage(
                        prompt_tokens=last.prompt_tokens,
                        completion_tokens=last.completion_tokens,
                        total_tokens=total,
                    ),
                )
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )
