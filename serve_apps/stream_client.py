"""Stream a video file into a live session of a running VLM-3R service, ask questions on the way.

    python -m serve_apps.stream_client --url http://127.0.0.1:8000 --video scene.mp4 --realtime \\
        --ask "t=2:How many chairs have you seen?" "t=end:How big is this room?" --save-ply room.ply

Opens a session (``POST /v1/sessions``), pushes every frame of the file as a JPEG or PNG
(``POST /v1/sessions/{id}/frames?t=<seconds>``) at the file's frame rate (``--realtime``) or as
fast as the server takes them, asks each question once the stream passes its time through the
official ``openai`` client (video URL ``session://<id>``), prints the answers, saves the
reconstruction (``GET /v1/sessions/{id}/reconstruction``) and closes the session. 429 and 503
answers are retried after their ``Retry-After``. The API key comes from ``--api-key`` or
``VLM3R_API_KEY``.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vlm3r_core import storage
from vlm3r_core.cli import UsageError, parse
from vlm3r_core.video import iter_frames, probe_video

RETRIES = 10  # tries of one request answered 429/503


def _parse_ask(text: str) -> tuple[float, str]:
    """``"t=2.5:question"`` -> (2.5, question); ``t=end`` asks after the last frame."""
    head, sep, question = text.partition(":")
    if not sep or not head.startswith("t=") or not question.strip():
        raise ValueError(f"--ask {text!r}: write t=<seconds>:<question> or t=end:<question>")
    when = head[2:]
    seconds = math.inf if when == "end" else float(when)
    if not seconds >= 0:
        raise ValueError(f"--ask {text!r}: the time must be >= 0 seconds")
    return seconds, question.strip()


@dataclass(frozen=True)
class StreamClientConfig:
    """Settings of the stream client.

    Attributes:
        url: the service's base URL (``http://127.0.0.1:8000``).
        video: a video file or URI to stream.
        ask: questions as ``t=<seconds>:<question>`` (asked once the stream passes that time) or
            ``t=end:<question>``; several after one flag.
        realtime: push frames at the file's frame rate (else as fast as the server takes them).
        save_ply: write the session's reconstruction (PLY) here at the end.
        save_trajectory: write the session's camera path (JSON, ``GET .../trajectory``) here at the end.
        confidence: the reconstruction's confidence threshold (default: the server's, 3).
        voxel_size: the reconstruction's voxel side in metres (default: the server's, 0.02; 0 keeps every point).
        api_key: bearer token (default: the ``VLM3R_API_KEY`` environment variable).
        model: the served model name.
        image_format: how frames travel: jpeg (smaller) or png (lossless: the session then sees
            exactly the decoded frames).
        every: push every n-th frame of the file.
        max_tokens: answer length.
        keep_open: leave the session open at the end (its id is printed).
    """

    url: str
    video: str
    ask: tuple[str, ...] = ()
    realtime: bool = False
    save_ply: str | None = None
    save_trajectory: str | None = None
    confidence: float | None = None
    voxel_size: float | None = None
    api_key: str | None = None
    model: str = "vlm3r"
    image_format: Literal["jpeg", "png"] = "jpeg"
    every: int = 1
    max_tokens: int = 32
    keep_open: bool = False

    def __post_init__(self) -> None:
        for text in self.ask:
            _parse_ask(text)
        if self.every < 1:
            raise ValueError(f"every must be >= 1, got {self.every}")


def encode_image(frame: np.ndarray, image_format: str) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(frame).save(out, format=image_format.upper(), **({"quality": 90} if image_format == "jpeg" else {}))
    return out.getvalue()


class StreamClient:
    """One live session over HTTP (``requests``), questions through the ``openai`` client."""

    def __init__(self, url: str, api_key: str | None, model: str = "vlm3r"):
        import requests
        from openai import OpenAI

        self.url, self.model = url.rstrip("/"), model
        self.http = requests.Session()
        if api_key:
            self.http.headers["Authorization"] = f"Bearer {api_key}"
        self.openai = OpenAI(base_url=f"{self.url}/v1", api_key=api_key or "none", max_retries=RETRIES)
        self.session_id: str | None = None

    def _call(self, method: str, path: str, **kwargs):
        """One request, retried after ``Retry-After`` on 429/503; raises with the server's error message."""
        for _ in range(RETRIES):
            r = self.http.request(method, f"{self.url}{path}", timeout=120, **kwargs)
            if r.status_code not in (429, 503):
                break
            time.sleep(float(r.headers.get("retry-after", "1")))
        if r.status_code >= 400:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:300]
            raise RuntimeError(f"{method} {path}: {r.status_code} {message}")
        return r

    def open(self) -> str:
        self.session_id = self._call("POST", "/v1/sessions").json()["id"]
        return self.session_id

    def push(self, image: bytes, t: float, image_format: str) -> dict:
        return self._call(
            "POST",
            f"/v1/sessions/{self.session_id}/frames",
            params={"t": f"{t:.6f}"},
            data=image,
            headers={"Content-Type": f"image/{image_format}"},
        ).json()

    def ask(self, question: str, max_tokens: int) -> str:
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "video_url", "video_url": {"url": f"session://{self.session_id}"}},
                    {"type": "text", "text": question},
                ],
            }
        ]
        out = self.openai.chat.completions.create(model=self.model, messages=messages, max_tokens=max_tokens)
        return out.choices[0].message.content

    def reconstruction(self, fmt: str = "ply", confidence: float | None = None, voxel_size: float | None = None) -> bytes:
        params = {"format": fmt, "confidence": confidence, "voxel_size": voxel_size}
        path = f"/v1/sessions/{self.session_id}/reconstruction"
        return self._call("GET", path, params={k: v for k, v in params.items() if v is not None}).content

    def trajectory(self) -> dict:
        return self._call("GET", f"/v1/sessions/{self.session_id}/trajectory").json()

    def close(self) -> None:
        self._call("DELETE", f"/v1/sessions/{self.session_id}")


def run(config: StreamClientConfig, out=sys.stdout) -> list[tuple[float, str, str]]:
    """Streams the video and asks the questions; returns (stream time asked, question, answer)."""
    probe = probe_video(config.video)
    fps = probe.fps if probe.fps > 0 else 30.0
    pending = sorted((_parse_ask(text) for text in config.ask), key=lambda q: q[0])
    client = StreamClient(config.url, config.api_key or os.environ.get("VLM3R_API_KEY"), config.model)
    session_id = client.open()
    print(f"session {session_id}: streaming {config.video} ({probe.num_frames} frames at {fps:g} fps)", file=out)
    answers, start, t = [], time.monotonic(), 0.0

    def ask_due(now_s: float) -> None:
        at = now_s if math.isfinite(now_s) else t  # the end: the last frame's time
        while pending and pending[0][0] <= now_s:
            _, question = pending.pop(0)
            answer = client.ask(question, config.max_tokens)
            answers.append((at, question, answer))
            print(f"[t={at:.2f}s] Q: {question}\n           A: {answer}", file=out)

    try:
        indices = range(0, probe.num_frames, config.every)
        for index, frame in iter_frames(storage.read_bytes(config.video), indices, name=config.video):
            t = index / fps
            ask_due(t)  # questions due before this frame: what the session has seen so far
            if config.realtime:
                time.sleep(max(0.0, start + t - time.monotonic()))
            client.push(encode_image(frame, config.image_format), t, config.image_format)
        ask_due(math.inf)
        if config.save_ply:
            storage.write_bytes(config.save_ply, client.reconstruction("ply", config.confidence, config.voxel_size))
            print(f"reconstruction: {config.save_ply}", file=out)
        if config.save_trajectory:
            storage.write_json(config.save_trajectory, client.trajectory())
            print(f"camera path: {config.save_trajectory}", file=out)
    finally:
        if not config.keep_open:
            client.close()
    return answers


def main(argv: list[str] | None = None) -> int:
    try:
        (config,) = parse(argv, StreamClientConfig, prog="python -m serve_apps.stream_client", description=__doc__)
    except UsageError as e:
        print(f"stream_client: error: {e}", file=sys.stderr)
        return 1
    try:
        run(config)
    except (RuntimeError, OSError) as e:
        print(f"stream_client: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
