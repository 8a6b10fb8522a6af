"""Serving latency and throughput: split deployments against one deployment that runs everything.

    python benchmarks/bench_serve.py                                   # tiny preset, local Ray, CPU
    python benchmarks/bench_serve.py --requests 48 --concurrency 1 8 --max-tokens 16

Split (what ``serve_apps`` ships): FastAPI ingress -> ``GeometryEncoder`` (decode + SigLIP + CUT3R,
``@serve.batch``) and ``LanguageModel`` (fusion + projector + LLM, ``@serve.batch``), each its own
replica, composed through ``DeploymentHandle``s. Baseline: one deployment whose single replica holds
the same ingress, encoder and language-model code (the same batching), called in-process instead
of through handles. Both run with one replica per deployment (autoscaling off, so both use the same
model copies) in the same Ray instance, one after the other, over HTTP on 127.0.0.1 with the
``openai`` client. Every request asks about a different synthetic video (no token-cache hits), so
the encoders run for each request. Prints p50/p95 latency and throughput per setup and
concurrency, and the split/single ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm3r_core.video import write_video  # noqa: E402


def synthetic_videos(count: int, num_frames: int, folder: Path) -> list[str]:
    """``count`` distinct small scene videos (a box crossing a gradient), as base64 data URLs."""
    urls = []
    for i in range(count):
        rng = np.random.default_rng(i)
        base = np.linspace(40, 200, 96, dtype=np.float32)[None, :, None] * np.ones((72, 96, 3), np.float32)
        frames = np.repeat((base * rng.uniform(0.5, 1.0, 3)).astype(np.uint8)[None], num_frames, axis=0)
        for t in range(num_frames):
            x = int(4 + 60 * t / max(num_frames - 1, 1))
            frames[t, 24:48, x : x + 24] = rng.integers(0, 255, 3)
        path = folder / f"video_{i}.mp4"
        write_video(str(path), frames, fps=10)
        urls.append("data:video/mp4;base64," + base64.b64encode(path.read_bytes()).decode())
    return urls


class _InProcessMethod:
    def __init__(self, fn, stream: bool):
        self.fn, self.stream = fn, stream

    def remote(self, *args):
        if self.stream:
            return _InProcessStream(self.fn, args)
        return asyncio.ensure_future(self._call(args))  # a Task: awaitable and cancellable, like a response

    async def _call(self, args):
        return await self.fn(*[await a if isinstance(a, asyncio.Future) else a for a in args])


class _InProcessStream:
    def __init__(self, fn, args):
        self.fn, self.args, self.gen = fn, args, None

    async def __anext__(self):
        if self.gen is None:
            args = [await a if isinstance(a, asyncio.Future) else a for a in self.args]
            self.gen = self.fn(*args)
        return await self.gen.__anext__()

    def cancel(self) -> None:
        if self.gen is not None:
            asyncio.ensure_future(self.gen.aclose())


class InProcessHandle:
    """What the ingress calls (``h.method.remote(...)``, ``h.options(stream=True)``) on an object in the
    same replica: the baseline's replacement for a ``DeploymentHandle``."""

    def __init__(self, target, stream: bool = False):
        self._target, self._stream = target, stream

    def options(self, stream: bool = False) -> InProcessHandle:
        return InProcessHandle(self._target, stream)

    def __getattr__(self, name: str) -> _InProcessMethod:
        return _InProcessMethod(getattr(self._target, name), self._stream)


def single_deployment_app(args):
    """The baseline: ingress, GeometryEncoder and LanguageModel code in one replica."""
    from ray import serve

    from serve_apps.api import Vlm3rIngress
    from serve_apps.deployments import GeometryEncoder, LanguageModel

    class SingleDeployment(Vlm3rIngress.func_or_class):
        async def __init__(self, args):  # Serve's ingress wrapper has an async __init__
            encoder = GeometryEncoder.func_or_class(args)
            language_model = LanguageModel.func_or_class(args)
            await super().__init__(args, InProcessHandle(encoder), InProcessHandle(language_model))

    deployment = serve.deployment(
        SingleDeployment, name="SingleDeployment", num_replicas=1, max_ongoing_requests=64
    )
    return deployment.options(ray_actor_options={"num_cpus": 0.25}).bind(args)


def split_app(args):
    """``build_app``'s graph with one replica per deployment (no autoscaling during the run)."""
    from serve_apps.api import Vlm3rIngress
    from serve_apps.deployments import GeometryEncoder, LanguageModel

    fixed = dict(num_replicas=1, autoscaling_config=None)
    return Vlm3rIngress.options(**fixed).bind(
        args, GeometryEncoder.options(**fixed).bind(args), LanguageModel.options(**fixed).bind(args)
    )


def run_load(base_url: str, urls: list[str], concurrency: int, max_tokens: int) -> dict:
    """Sends one question per video with ``concurrency`` clients; returns latency and throughput."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)

    def ask(url: str) -> float:
        start = time.perf_counter()
        client.chat.completions.create(
            model="vlm3r",
            max_tokens=max_tokens,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "video_url", "video_url": {"url": url}},
                        {"type": "text", "text": "How many chairs are in this room?"},
                    ],
                }
            ],
        )
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(ask, urls))
    wall = time.perf_counter() - start
    return {
        "p50_s": float(np.percentile(latencies, 50)),
        "p95_s": float(np.percentile(latencies, 95)),
        "throughput_rps": len(urls) / wall,
        "wall_s": wall,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="preset name or save_pretrained folder")
    parser.add_argument("--requests", type=int, default=24, help="requests per setup and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--frames", type=int, default=40, help="frames per synthetic video")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    opts = parser.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from serve_apps.args import Vlm3rArgs
    from serve_apps.ports import free_loopback_port

    args = Vlm3rArgs(model=opts.model, max_tokens_limit=max(opts.max_tokens, 64), token_cache_entries=0)
    with tempfile.TemporaryDirectory() as tmp:
        n_videos = opts.requests * len(opts.concurrency) + 1
        urls = synthetic_videos(n_videos, opts.frames, Path(tmp))
        warmup, urls = urls[0], urls[1:]
        port = free_loopback_port()
        ray.init(num_cpus=opts.num_cpus, include_dashboard=False, log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        results: dict[tuple[str, int], dict] = {}
        try:
            for name, app in (("split", split_app(args)), ("single", single_deployment_app(args))):
                serve.run(app, name=name, route_prefix=f"/{name}")
                base_url = f"http://127.0.0.1:{port}/{name}/v1"
                run_load(base_url, [warmup], 1, opts.max_tokens)  # warm-up (first-call kernels)
                for i, concurrency in enumerate(opts.concurrency):
                    batch = urls[i * opts.requests : (i + 1) * opts.requests]
                    results[(name, concurrency)] = r = run_load(base_url, batch, concurrency, opts.max_tokens)
                    print(
                        f"{name:6s} concurrency {concurrency:2d}: p50 {r['p50_s']:.2f} s  p95 {r['p95_s']:.2f} s  "
                        f"{r['throughput_rps']:.2f} req/s  ({opts.requests} requests in {r['wall_s']:.1f} s)",
                        flush=True,
                    )
                if name == "split":
                    stats = (
                        serve.get_deployment_handle("GeometryEncoder", app_name=name).stats.remote().result()
                    )
                    print(
                        f"split  GeometryEncoder: {stats.videos_encoded} videos in {stats.batches} encoder batches "
                        f"(largest {stats.largest_batch})",
                        flush=True,
                    )
                serve.delete(name)
        finally:
            serve.shutdown()
            ray.shutdown()
    for concurrency in opts.concurrency:
        split, single = results[("split", concurrency)], results[("single", concurrency)]
        print(
            f"concurrency {concurrency:2d}: split/single throughput {split['throughput_rps'] / single['throughput_rps']:.2f}x, "
            f"p50 latency {split['p50_s'] / single['p50_s']:.2f}x, p95 latency {split['p95_s'] / single['p95_s']:.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
