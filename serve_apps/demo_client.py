"""Serve a model locally, ask it one question about a video with the ``openai`` client, shut down.

    python -m serve_apps.demo_client --model ./vlm3r-data/train/model --video scene.mp4 \\
        --question "How many chairs are in this room?"

The last step of ``make demo``: starts a local Ray and the VLM-3R application on 127.0.0.1 with the
model the training job saved (``save_pretrained`` folder or URI, or a preset such as ``tiny``), sends
the video as a base64 data URL, streams the answer to stdout, and stops Serve and Ray.
"""

import argparse
import base64
import mimetypes
import os
import sys

from serve_apps.ports import free_loopback_port
from vlm3r_core import storage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="save_pretrained folder/URI or preset name")
    parser.add_argument("--video", required=True, help="video file or URI (mp4, ...)")
    parser.add_argument("--question", default="How many chairs are in this room?")
    parser.add_argument("--max-tokens", type=int, default=32)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
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
        serve.run(build_app(Vlm3rArgs(model=opts.model)), name="vlm3r", route_prefix="/")
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
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
