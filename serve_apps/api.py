"""The HTTP face of the VLM-3R service: an OpenAI-compatible FastAPI ingress.

Routes:

- ``POST /v1/chat/completions``: one user message whose content holds one ``video_url`` part (a
  base64 ``data:video/...`` URL, or a URI under a prefix the server allows, e.g. ``s3://bucket/``)
  and text parts with the question. ``stream: true`` answers with server-sent events
  (``chat.completion.chunk`` objects, then ``data: [DONE]``).
- ``GET /v1/models``: the one served model.
- ``GET /health``: 200 while the ingress is up (no API key needed).
- ``GET /`` redirects to ``GET /demo``, the browser demo page (``serve_apps/static/``, files under
  ``/demo/static/``; no API key needed for the page itself). The page calls, with the API key:
  ``GET /demo/videos`` (the bundled demo videos and their benchmark questions),
  ``GET /demo/videos/file?video=<id>`` (a video's bytes), ``GET /demo/videos/layout?video=<id>``
  (a scene's annotated 3D layout, the viewer's JSON) and ``POST /demo/frames`` (body: a video;
  answers the frames the model samples as JPEG data URLs). See ``serve_apps/demo.py``.

Every error is a 4xx/5xx in the OpenAI error format ``{"error": {"message", "type", "param",
"code"}}``. Requests are checked in this order, so a request without a valid API key never reaches
a model and a bad request never reaches a replica that could crash on it: API key (401), body size
(413), JSON (400), schema (400), model name (404), content parts (400/415), video source (403/413/
400), then the video is decoded by the ``GeometryEncoder`` (422 undecodable, 413 over the frame or
duration limits) and answered by the ``LanguageModel`` (504 past the request timeout, 503 when a
replica died mid-request; Serve starts a new one).

A question written as in the benchmarks, ``<question>\\nOptions:\\nA. ...\\nB. ...``, is a
multiple-choice question: the prompt is built exactly as in evaluation
(``vlm3r_core.prompting.build_user_message`` with the model's ``PromptConfig``).
"""

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError, ReplicaUnavailableError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_apps.args import API_KEYS_ENV, Vlm3rArgs
from serve_apps.demo import DemoSite, static_file
from serve_apps.deployments import GenerationOutput, GenerationRequest, VideoLimitError
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
    extract_query,
    fetch_video,
    parse_chat_request,
    read_body,
    requested_max_tokens,
)
from vlm3r_core.video import VideoDecodeError

# No ``from __future__ import annotations`` in this module: FastAPI reads the route annotations
# (``request: Request``) as classes, also through Serve's ingress wrapper.

logger = logging.getLogger("ray.serve")


# ----------------------------------------------------------------------------------------------
# Errors from the deployments


def backend_error(e: BaseException) -> ApiError:
    """Maps an error raised by a downstream deployment to the HTTP error the client sees."""
    cause = e
    while isinstance(cause, RayTaskError) and isinstance(cause.cause, BaseException):
        cause = cause.cause
    if isinstance(cause, VideoLimitError):
        return ApiError(413, str(cause), "video_too_long")
    if isinstance(cause, VideoDecodeError):
        return ApiError(422, str(cause), "undecodable_video")
    if isinstance(cause, BackPressureError):
        return ApiError(503, "the service is at capacity; retry later", "overloaded")
    if isinstance(cause, (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError)):
        return ApiError(
            503, "a model replica failed while serving this request; retry", "replica_unavailable"
        )
    logger.error("request failed: %r", e)
    return ApiError(500, f"internal error ({type(cause).__name__})", "internal_error")


# ----------------------------------------------------------------------------------------------
# The ingress deployment

api = FastAPI(title="VLM-3R", description="Spatial question answering about videos (OpenAI chat format).")


@api.exception_handler(ApiError)
async def _api_error(_: Request, e: ApiError) -> JSONResponse:
    return e.response()


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
    return ApiError(
        e.status_code, str(e.detail), "not_found" if e.status_code == 404 else "http_error"
    ).response()


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
        video = await read_body(request, self.args.max_video_bytes)
        try:
            return await asyncio.to_thread(self.demo.frames, video)
        except ApiError:
            raise
        except Exception as e:
            raise backend_error(e) from None

    @api.post("/v1/chat/completions", response_model=None)
    async def chat_completions(self, request: Request) -> JSONResponse | StreamingResponse:
        authorize(request.headers.get("authorization"), self.api_keys)
        chat = parse_chat_request(await read_body(request, self.args.max_body_bytes))
        if chat.model != self.args.served_model_name:
            raise ApiError(
                404,
                f"model {chat.model!r} does not exist; this server serves {self.args.served_model_name!r}",
                "model_not_found",
                param="model",
            )
        max_new_tokens = requested_max_tokens(chat, self.args.default_max_tokens, self.args.max_tokens_limit)
        query = extract_query(chat)
        video = await self._video_bytes(query.video)
        generation = GenerationRequest(
            question=query.question, options=query.options, max_new_tokens=max_new_tokens
        )
        encoded = self.encoder.encode.remote(
            video, query.video.param
        )  # chained: features go encoder -> LM directly
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if chat.stream:
            include_usage = chat.stream_options is not None and chat.stream_options.include_usage
            stream = self.language_model.options(stream=True).generate_stream.remote(generation, encoded)
            return await self._stream_response(stream, completion_id, created, include_usage)
        response = self.language_model.generate.remote(generation, encoded)
        try:
            out: GenerationOutput = await asyncio.wait_for(response, self.args.request_timeout_s)
        except asyncio.TimeoutError:
            response.cancel()
            raise self._timeout() from None
        except ApiError:
            raise
        except Exception as e:
            raise backend_error(e) from None
        completion = ChatCompletion(
            id=completion_id,
            created=created,
            model=self.args.served_model_name,
            choices=[Choice(message=AssistantMessage(content=out.text), finish_reason=out.finish_reason)],
            usage=Usage(
                prompt_tokens=out.prompt_tokens,
                completion_tokens=out.completion_tokens,
                total_tokens=out.prompt_tokens + out.completion_tokens,
            ),
        )
        return JSONResponse(completion.model_dump(exclude_none=True))

    async def _video_bytes(self, source: VideoSource) -> bytes:
        if source.data is not None:
            if len(source.data) > self.args.max_video_bytes:
                raise ApiError(
                    413,
                    f"{source.param}: the video is {len(source.data)} bytes, more than the limit of {self.args.max_video_bytes}",
                    "video_too_large",
                    param=source.param,
                )
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
        self, stream, completion_id: str, created: int, include_usage: bool
    ) -> StreamingResponse:
        """Waits for the first output (so errors before any token are plain 4xx/5xx), then streams
        ``chat.completion.chunk`` events; an error after the first event ends the stream with an
        ``{"error": ...}`` event."""
        deadline = time.monotonic() + self.args.request_timeout_s

        async def next_output() -> GenerationOutput | None:
            try:
                return await asyncio.wait_for(stream.__anext__(), max(deadline - time.monotonic(), 0.001))
            except StopAsyncIteration:
                return None
            except asyncio.TimeoutError:
                stream.cancel()
                raise self._timeout() from None
            except Exception as e:
                raise backend_error(e) from None

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
            yield event(Delta(role="assistant", content=""))
            out, last = first, first
            try:
                while out is not None:
                    last = out
                    if out.text:
                        yield event(Delta(content=out.text))
                    out = await next_output()
            except ApiError as e:
                yield f"data: {e.response().body.decode()}\n\n"
                return
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
