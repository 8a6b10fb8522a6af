"""Serve a model locally, ask it one question about a video with the ``openai`` client, shut down.

    python -m serve_apps.demo_client --model ./vlm3r-data/train/model --video scene.mp4 \\
        --question "How many chairs are in this room?" [--live-ply room.ply]

The last step of ``make demo``: starts a local Ray and the VLM-3R application on 127.0.0.1 with the
model the training job saved (``save_pretrained`` folder or URI, or a preset such as ``tiny``), sends
the video as a base64 data URL, streams the answer to stdout. With ``--live-ply`` it then streams
the same video frame by frame into a live session (``serve_apps.stream_client``), asks the question
again at its end and saves the session's reconstruction (PLY) and camera path (``trajectory.json``
beside it). Stops Serve and Ray.
"""

import base64
import mimetypes
import os
import sys
from dataclasses import dataclass

from serve_apps.ports import free_loopback_port
from vlm3r_core import storage
from vlm3r_core.cli import run_job


@dataclass(frozen=True)
class DemoClientConfig:
    """One question to a locally served model.

    Args:
        video: video file or URI (mp4, ...).
        model: ``save_pretrained`` folder/URI or preset name.
        question: the question (a benchmark question may end with ``\nOptions:\nA. ...``).
        max_tokens: longest answer, in tokens.
        live_ply: also stream the video into a live session and save its reconstruction here.
        live_confidence: the reconstruction's confidence threshold (>= 1; 1 keeps every point: an
            untrained CUT3R such as the tiny preset's is never confident; None: the server's, 3).
        live_voxel_size: the reconstruction's voxel side in metres (0 keeps every point; None:
            the server's, 0.02).
    """

    video: str
    model: str = "tiny"
    question: str = "How many chairs are in this room?"
    max_tokens: int = 32
    live_ply: str | None = None
    live_confidence: float | None = None
    live_voxel_size: float | None = None

    def __post_init__(self):
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")


def ask(opts: DemoClientConfig) -> int:
    import ray
    from openai import OpenAI
    from ray import serve

    from serve_apps.app import build_app
    from serve_apps.args import API_KEYS_ENV, Vlm3rArgs

    mime = mimetypes.guess_type(opts.video)[0] or "video/mp4"
    video_url = f"data:{mime};base64," + base64.b64encode(storage.read_bytes(opts.video)).decode()
    api_key = (
        os.environ.get(API_KEYS_ENV, "").split(",")[0].strip() or "local"
    )  # the replicas inherit the env
    port = free_loopback_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        # point heads: the live session exports its reconstruction (the tokens are the same)
        app_args = Vlm3rArgs(model=opts.model, cut3r_point_heads=opts.live_ply is not None)
        serve.run(build_app(app_args), name="vlm3r", route_prefix="/")
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=api_key, max_retries=0, timeout=300)
        stream = client.chat.completions.create(
            model="vlm3r",
            max_tokens=opts.max_tokens,
            stream=True,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "video_url", "video_url": {"url": video_url}},
                        {"type": "text", "text": opts.question},
                    ],
                }
            ],
        )
        print(f"Q: {opts.question}\nA: ", end="", flush=True)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                print(chunk.choices[0].delta.content, end="", flush=True)
        print()
        if opts.live_ply:
            stream_live(opts, f"http://127.0.0.1:{port}", api_key)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


def stream_live(opts: DemoClientConfig, url: str, api_key: str) -> None:
    """Streams the video into a live session, asks the question at its end, saves the reconstruction."""
    from serve_apps.stream_client import StreamClientConfig, run

    trajectory = storage.join(opts.live_ply.rsplit("/", 1)[0], "trajectory.json") if "/" in opts.live_ply else "trajectory.json"
    config = StreamClientConfig(url=url, video=opts.video, ask=(f"t=end:{opts.question}",), save_ply=opts.live_ply,
                                save_trajectory=trajectory, api_key=api_key, image_format="png",
                                max_tokens=opts.max_tokens, confidence=opts.live_confidence,
                                voxel_size=opts.live_voxel_size)  # fmt: skip
    answers = run(config)
    print(f"LIVE: {answers[-1][2] if answers else ''}")
    print(f"[serve] answered about {opts.video} whole and live; reconstruction -> {opts.live_ply}, {trajectory}")


def main(argv: list[str] | None = None) -> int:
    return run_job("demo_client", argv, [DemoClientConfig], ask, __doc__.split("\n", 1)[0],
                   prog="python -m serve_apps.demo_client")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
