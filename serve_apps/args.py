"""Settings of the VLM-3R Serve application (``Vlm3rArgs``); every module of the package imports them
from here, and this module imports nothing of the package."""

import pydantic

# No ``from __future__ import annotations``: Serve reads ``build_app``'s annotation as a class to
# turn ``key=value`` arguments into ``Vlm3rArgs``.
API_KEYS_ENV = "VLM3R_API_KEYS"  # comma-separated bearer tokens, read by each ingress replica


class Vlm3rArgs(pydantic.BaseModel):
    """Settings of the application (``serve run serve_apps.app:build_app key=value ...`` or ``args:``
    in a Serve config YAML).

    Attributes:
        model: a preset name ("tiny") or a ``save_pretrained`` folder/URI (``jobs/train.py`` output).
        served_model_name: the model id clients send and ``/v1/models`` lists.
        api_keys: accepted bearer tokens (also ``VLM3R_API_KEYS``, comma-separated); none: open.
        allowed_uri_prefixes: video URIs the server may read (e.g. ``s3://bucket/videos/``); none:
            only base64 data URLs.
        max_body_bytes: largest HTTP request body (413).
        max_video_bytes: largest video (decoded data URL or object behind a URI) (413).
        max_video_frames: videos with more frames are refused (413).
        max_video_duration_s: longer videos are refused (413).
        max_header_bytes: largest total size of a request's header names and values (431).
        body_timeout_s: longest wait for the next piece of a request body (408); the whole body
            must also arrive within ``request_timeout_s`` (or ``body_timeout_s`` if longer).
        max_inflight_body_bytes: request bodies one ingress replica holds at once (by
            Content-Length, ``max_body_bytes`` when unknown); past it, 503 with Retry-After.
        max_video_pixels: largest width x height of a video frame (413). The default, 2560 x 1440
            (3.7 MP), admits the datasets' source videos (ScanNet 1296x968, ARKitScenes and
            ScanNet++ iPhone 1920x1440) and phone video up to 1440p, while bounding what one
            decoded frame costs (1.5 bytes a pixel in yuv420, 5.5 MB) before it is downsized to
            the encoders' input; the model sees 384-432 px squares, so more pixels add no detail.
        video_codecs: codecs the decoder accepts (others: 415).
        max_question_tokens: longest question text, options included, in the model's tokens (400).
        max_options: most lettered options of a multiple-choice question (400).
        max_messages: most entries in ``messages`` (400; checked before the rest is parsed).
        max_content_parts: most parts in a message's content (400).
        max_queued_requests: requests that may wait for a GeometryEncoder or LanguageModel
            replica (Serve's ``max_queued_requests``); past it, 429 with Retry-After. -1: no limit.
            A Serve config's ``deployments:`` entry with its own ``max_queued_requests`` wins.
        decode_concurrency: videos one GeometryEncoder replica decodes at once (each holds its
            decoder's frame buffers).
        default_max_tokens: answer length when a request gives no ``max_tokens``.
        max_tokens_limit: largest ``max_tokens`` a request may ask for.
        request_timeout_s: a request without an answer by then gets 504.
        token_cache_entries: encoded videos kept per ``GeometryEncoder`` replica.
        encoder_batch_size: most videos encoded together (``@serve.batch``).
        lm_batch_size: most requests generated together (``@serve.batch``).
        demo_videos: videos the demo page (``/demo``) offers: a data root (``scenes/<dataset>/<scene>/``
            with ``scene.json``; their benchmark questions from the ``qa/benchmark/`` shards and their
            annotated 3D layout) or a folder of video files; none: the page offers uploads only.
        demo_questions: benchmark rows (parquet/JSON/JSONL) offered with the demo videos, instead
            of the data root's ``qa/benchmark/`` shards.
    """

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    model: str = "tiny"
    served_model_name: str = "vlm3r"
    api_keys: tuple[str, ...] = ()
    allowed_uri_prefixes: tuple[str, ...] = ()
    max_body_bytes: int = pydantic.Field(default=96 * 2**20, gt=0)
    max_video_bytes: int = pydantic.Field(default=64 * 2**20, gt=0)
    max_video_frames: int = pydantic.Field(default=18_000, gt=0)
    max_video_duration_s: float = pydantic.Field(default=600.0, gt=0)
    max_header_bytes: int = pydantic.Field(default=32 * 2**10, gt=0)
    body_timeout_s: float = pydantic.Field(default=10.0, gt=0)
    max_inflight_body_bytes: int = pydantic.Field(default=384 * 2**20, gt=0)
    max_video_pixels: int = pydantic.Field(default=2560 * 1440, gt=0)
    video_codecs: tuple[str, ...] = ("h264", "hevc", "vp8", "vp9", "av1", "mpeg4")
    max_question_tokens: int = pydantic.Field(default=1024, gt=0)
    max_options: int = pydantic.Field(default=10, ge=0)
    max_messages: int = pydantic.Field(default=16, gt=0)
    max_content_parts: int = pydantic.Field(default=16, gt=0)
    max_queued_requests: int = pydantic.Field(default=32, ge=-1)
    decode_concurrency: int = pydantic.Field(default=2, gt=0)
    default_max_tokens: int = pydantic.Field(default=64, gt=0)
    max_tokens_limit: int = pydantic.Field(default=512, gt=0)
    request_timeout_s: float = pydantic.Field(default=120.0, gt=0)
    token_cache_entries: int = pydantic.Field(default=64, ge=0)
    encoder_batch_size: int = pydantic.Field(default=4, gt=0)
    lm_batch_size: int = pydantic.Field(default=8, gt=0)
    demo_videos: str | None = None
    demo_questions: str | None = None

    @pydantic.field_validator("api_keys", "allowed_uri_prefixes", "video_codecs", mode="before")
    @classmethod
    def _split_commas(cls, value):
        """``serve run ... api_keys=k1,k2`` passes the string "k1,k2": a list, comma-separated."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @pydantic.model_validator(mode="after")
    def _check(self) -> "Vlm3rArgs":
        if self.default_max_tokens > self.max_tokens_limit:
            raise ValueError(
                f"default_max_tokens {self.default_max_tokens} is more than max_tokens_limit {self.max_tokens_limit}"
            )
        if self.max_inflight_body_bytes < self.max_body_bytes:
            raise ValueError(
                f"max_inflight_body_bytes {self.max_inflight_body_bytes} is less than max_body_bytes "
                f"{self.max_body_bytes}: no body of the largest size could ever be read"
            )
        for prefix in self.allowed_uri_prefixes:
            if "://" not in prefix and not prefix.startswith("/"):
                raise ValueError(
                    f"allowed_uri_prefixes: {prefix!r} is neither a URI prefix (s3://...) nor an absolute path"
                )
        return self
