"""Serving: split deployments against one deployment (A/B), and a soak under hostile clients.

    python benchmarks/bench_serve.py                                   # A/B, tiny preset, local Ray, CPU
    python benchmarks/bench_serve.py --requests 48 --concurrency 1 8 --rounds 4 --max-tokens 16
    python benchmarks/bench_serve.py --soak --requests 240 --max-seconds 900 --concurrency 4

A/B. Split (what ``serve_apps`` ships): FastAPI ingress -> ``GeometryEncoder`` (decode + SigLIP +
CUT3R, ``@serve.batch``) and ``LanguageModel`` (fusion + projector + LLM, ``@serve.batch``), each its
own replica, composed through ``DeploymentHandle``s. Baseline: one deployment whose single replica
holds the same ingress, encoder and language-model code (the same batching), called in-process
instead of through handles. Both are deployed at once (one replica per deployment, autoscaling
off) in the same Ray instance and measured in interleaved rounds (split, single, single, split,
...), so a change of the machine's load lands on both sides. Every request asks about a different
synthetic video (no token-cache hits). Prints p50/p95 latency and throughput per setup and
concurrency, and the split/single ratios.

Soak (``--soak``). The shipped application (``build_app``, default limits) under a bounded load
(``--requests`` and ``--max-seconds``) from ``--concurrency`` clients on loopback: phases of good
requests only alternate with phases where every ``--bad-every``-th request is hostile (over-long
questions, 2048x2048 and 4096x4096 videos, hostile JSON, a PNG declared as mp4, chained URIs, wrong
keys, reserved tokens, bodies shorter than their Content-Length, clients that leave mid-stream,
...). Good requests include accepted large videos (2560x1440, the default pixel limit). Reports the
errors of good requests (target 0), p50/p95 of good requests in clean and hostile phases, whether
every hostile request got its expected status, and each replica's peak memory before and after
against the budget ``serve_apps.deployments.memory_budgets`` states. Exit status 1 when a target
is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import json
import os
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlm3r_core.video import write_video  # noqa: E402

QUESTION = "How many chairs are in this room?"


def scene_video(width: int, height: int, num_frames: int, seed: int, fps: float = 10) -> bytes:
    """A box crossing a gradient (H.264 mp4 bytes)."""
    rng = np.random.default_rng(seed)
    base = np.linspace(40, 200, width, dtype=np.float32)[None, :, None] * np.ones((height, width, 3), np.float32)
    frames = np.repeat((base * rng.uniform(0.5, 1.0, 3)).astype(np.uint8)[None], num_frames, axis=0)
    for t in range(num_frames):
        x = int(width // 16 + (width // 2) * t / max(num_frames - 1, 1))
        frames[t, height // 3 : 2 * height // 3, x : x + width // 4] = rng.integers(0, 255, 3)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "video.mp4"
        write_video(str(path), frames, fps=fps)
        return path.read_bytes()


def data_url(video: bytes) -> str:
    return "data:video/mp4;base64," + base64.b64encode(video).decode()


def synthetic_videos(count: int, num_frames: int) -> list[str]:
    """``count`` distinct small scene videos, as base64 data URLs."""
    return [data_url(scene_video(96, 72, num_frames, seed=i)) for i in range(count)]


def chat_body(url: str, question: str = QUESTION, **extra) -> dict:
    content = [{"type": "video_url", "video_url": {"url": url}}, {"type": "text", "text": question}]
    return {"model": "vlm3r", "messages": [{"role": "user", "content": content}], **extra}


# ----------------------------------------------------------------------------------------------
# The single-deployment baseline


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


def run_load(base_url: str, urls: list[str], concurrency: int, max_tokens: int) -> tuple[list[float], float]:
    """Sends one question per video with ``concurrency`` clients; returns the latencies and the wall time."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=600)

    def ask(url: str) -> float:
        start = time.perf_counter()
        client.chat.completions.create(max_tokens=max_tokens, **chat_body(url))
        return time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(ask, urls))
    return latencies, time.perf_counter() - start


def summary(latencies: list[float], wall_s: float) -> dict:
    return {
        "p50_s": float(np.percentile(latencies, 50)),
        "p95_s": float(np.percentile(latencies, 95)),
        "throughput_rps": len(latencies) / wall_s,
        "requests": len(latencies),
        "wall_s": wall_s,
    }


def ab(opts, port: int) -> int:
    """Split against single, deployed together and measured in interleaved rounds."""
    from ray import serve

    from serve_apps.args import Vlm3rArgs

    args = Vlm3rArgs(model=opts.model, max_tokens_limit=max(opts.max_tokens, 64), token_cache_entries=0)
    sides = ("split", "single")
    per_round = max(1, opts.requests // opts.rounds)
    urls = iter(synthetic_videos(2 + per_round * opts.rounds * len(sides) * len(opts.concurrency), opts.frames))
    for name, app in (("split", split_app(args)), ("single", single_deployment_app(args))):
        serve.run(app, name=name, route_prefix=f"/{name}")
        run_load(f"http://127.0.0.1:{port}/{name}/v1", [next(urls)], 1, opts.max_tokens)  # warm-up
    results: dict[tuple[str, int], dict] = {}
    for concurrency in opts.concurrency:
        latencies: dict[str, list[float]] = {name: [] for name in sides}
        walls = dict.fromkeys(sides, 0.0)
        for round_ in range(opts.rounds):
            for name in sides if round_ % 2 == 0 else sides[::-1]:  # ABBA...: drift lands on both
                batch = list(itertools.islice(urls, per_round))
                lat, wall = run_load(f"http://127.0.0.1:{port}/{name}/v1", batch, concurrency, opts.max_tokens)
                latencies[name] += lat
                walls[name] += wall
        for name in sides:
            results[(name, concurrency)] = r = summary(latencies[name], walls[name])
            print(
                f"{name:6s} concurrency {concurrency:2d}: p50 {r['p50_s']:.2f} s  p95 {r['p95_s']:.2f} s  "
                f"{r['throughput_rps']:.2f} req/s  ({r['requests']} requests in {opts.rounds} rounds, {r['wall_s']:.1f} s)",
                flush=True,
            )
    stats = serve.get_deployment_handle("GeometryEncoder", app_name="split").stats.remote().result()
    print(f"split  GeometryEncoder: {stats.videos_encoded} videos in {stats.batches} encoder batches (largest {stats.largest_batch})")
    for concurrency in opts.concurrency:
        split, single = results[("split", concurrency)], results[("single", concurrency)]
        print(
            f"concurrency {concurrency:2d}: split/single throughput {split['throughput_rps'] / single['throughput_rps']:.2f}x, "
            f"p50 latency {split['p50_s'] / single['p50_s']:.2f}x, p95 latency {split['p95_s'] / single['p95_s']:.2f}x"
        )
    return 0


# ----------------------------------------------------------------------------------------------
# Soak


SOAK_KEY = "soak-key"


@dataclass
class Outcome:
    kind: str
    good: bool
    hostile_phase: bool
    status: int
    expected: int
    latency_s: float
    detail: str = ""


def _raw_http(port: int, head: str, body: bytes, close_after: int | None = None, timeout: float = 120) -> tuple[int, bytes]:
    """A request on its own connection; ``close_after``: leave after that many streamed content events."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if close_after is not None and answer.count(b'"content": "') - 1 >= close_after:
                return 0, answer  # the client leaves
            if b"\r\n\r\n" in answer:
                head_bytes, _, rest = answer.partition(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head_bytes.split(b"\r\n") if line.lower().startswith(b"content-length")),
                    None,
                )
                if length is not None and len(rest) >= length:
                    break
                if b"[DONE]" in rest:
                    break
    return int(answer.split()[1]) if answer.startswith(b"HTTP/") else 0, answer


def _request_head(length: int | str, key: str = SOAK_KEY) -> str:
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )


class SoakTraffic:
    """The good and hostile requests of the soak, built before the clock starts."""

    def __init__(self, port: int, max_tokens: int, num_frames: int):
        self.port, self.max_tokens = port, max_tokens
        import requests

        self.session_local = threading.local()
        self._requests = requests
        small = [scene_video(96, 72, num_frames, seed=1000 + i) for i in range(24)]
        self.small = itertools.cycle([data_url(v) for v in small])
        self.cached = data_url(small[0])
        self.large = data_url(scene_video(2560, 1440, 8, seed=7))  # at the default pixel limit: accepted
        png = io.BytesIO()
        from PIL import Image

        Image.new("RGB", (64, 64), (10, 200, 10)).save(png, format="PNG")
        over = data_url(scene_video(2048, 2048, 2, seed=8, fps=2))
        huge = data_url(scene_video(4096, 4096, 1, seed=9, fps=1))
        truncated = data_url(small[1][: len(small[1]) // 2])
        ok = json.dumps(chat_body(self.cached, max_tokens=4)).encode()
        self.good = [
            ("small video", lambda: self._post(chat_body(next(self.small), max_tokens=max_tokens))),
            ("cached video", lambda: self._post(chat_body(self.cached, "How big is the room?", max_tokens=max_tokens))),
            ("stream", lambda: self._post(chat_body(next(self.small), max_tokens=max_tokens, stream=True), stream=True)),
            ("2560x1440 video", lambda: self._post(chat_body(self.large, max_tokens=max_tokens))),
            (
                "multiple choice",
                lambda: self._post(chat_body(next(self.small), "Which is closer?\nOptions:\nA. chair\nB. table", max_tokens=max_tokens)),
            ),
        ]
        self.hostile = [
            ("10 KB question", 400, lambda: self._post(chat_body(self.cached, "How far? " + "x" * 10_000))),
            ("100 KB question", 400, lambda: self._post(chat_body(self.cached, "Q " + "word " * 20_000))),
            ("2048x2048 video", 413, lambda: self._post(chat_body(over))),
            ("4096x4096 video", 413, lambda: self._post(chat_body(huge))),
            ("nested JSON", 400, lambda: self._post_raw(b"[" * 100_000 + b"]" * 100_000)),
            ("5000-digit integer", 400, lambda: self._post_raw(ok[:-1] + b', "max_tokens": ' + b"9" * 5000 + b"}")),
            ("max_tokens as string", 400, lambda: self._post(chat_body(self.cached, max_tokens="10"))),
            ("PNG declared as mp4", 415, lambda: self._post(chat_body("data:video/mp4;base64," + base64.b64encode(png.getvalue()).decode()))),
            ("truncated mp4", 422, lambda: self._post(chat_body(truncated))),
            ("chained URI", 403, lambda: self._post(chat_body("s3://bucket/videos/a.mp4::http://127.0.0.1:9/"))),
            ("wrong key", 401, lambda: self._post(chat_body(self.cached), key="nope")),
            ("reserved token", 400, lambda: self._post(chat_body(self.cached, "Where is the <image>?"))),
            ("1 MB header", 431, lambda: self._post(chat_body(self.cached), extra_headers={"X-Big": "y" * 2**20})),
            ("body shorter than Content-Length", 408, lambda: _raw_http(self.port, _request_head(len(ok) + 100), ok)[0]),
            (
                "client leaves mid-stream",
                0,
                lambda: self._leave(chat_body(next(self.small), "Describe the room.", max_tokens=256, stream=True)),
            ),
        ]

    def detail(self) -> str:
        """What the last request of this thread answered, when it was not a 200."""
        return getattr(self.session_local, "detail", "")

    def _session(self):
        if not hasattr(self.session_local, "s"):
            self.session_local.s = self._requests.Session()
        return self.session_local.s

    def _post(self, body: dict, stream: bool = False, key: str = SOAK_KEY, extra_headers: dict | None = None) -> int:
        return self._post_raw(json.dumps(body).encode(), stream, key, extra_headers)

    def _post_raw(self, data: bytes, stream: bool = False, key: str = SOAK_KEY, extra_headers: dict | None = None) -> int:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(extra_headers or {})}
        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        self.session_local.detail = ""
        with self._session().post(url, data=data, headers=headers, timeout=300, stream=stream) as r:
            if r.status_code != 200:
                self.session_local.detail = r.text[:200]
                return r.status_code
            if stream:
                events = [line for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
                return 200 if events and events[-1] == "data: [DONE]" and not any('"error"' in e for e in events) else 0
            return 200 if r.json()["choices"][0]["finish_reason"] in ("stop", "length") else 0

    def _leave(self, body: dict) -> int:
        data = json.dumps(body).encode()
        _raw_http(self.port, _request_head(len(data)), data, close_after=3)
        return 0


def soak(opts, port: int) -> int:
    from ray import serve

    from serve_apps.app import build_app
    from serve_apps.args import Vlm3rArgs
    from serve_apps.deployments import memory_budgets
    from vlm3r_core.inference import load_processor

    args = Vlm3rArgs(model=opts.model, api_keys=(SOAK_KEY,), body_timeout_s=2.0, max_tokens_limit=256)
    serve.run(build_app(args), name="soak", route_prefix="/")
    deployments = ("Vlm3rIngress", "GeometryEncoder", "LanguageModel")
    handles = {name: serve.get_deployment_handle(name, app_name="soak") for name in deployments}

    def memory() -> dict:
        return {name: handles[name].stats.remote().result(timeout_s=60).memory for name in deployments}

    print("building the soak's videos ...", flush=True)
    traffic = SoakTraffic(port, opts.max_tokens, opts.frames)
    for kind, ask in traffic.good:  # warm-up: every path once, small videos (kernels, first allocations)
        if kind != "2560x1440 video":
            assert ask() == 200, f"warm-up request failed: {kind}: {traffic.detail()}"
    before = memory()
    budgets = memory_budgets(args, load_processor(opts.model).config)

    phase = max(4, opts.phase)
    plan = []  # (hostile phase?, good kind or hostile case)
    good_kinds, hostile_cases = itertools.cycle(traffic.good), itertools.cycle(traffic.hostile)
    for i in range(opts.requests):
        hostile_phase = (i // phase) % 2 == 1  # clean, hostile, clean, ... phases (A/B interleaved)
        if hostile_phase and i % opts.bad_every == 0:
            plan.append((True, next(hostile_cases)))
        else:
            plan.append((hostile_phase, next(good_kinds)))
    deadline = time.monotonic() + opts.max_seconds
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    cursor = iter(plan)

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                item = next(cursor, None)
            if item is None:
                return
            hostile_phase, case = item
            if len(case) == 3:
                kind, expected, ask = case
                good = False
            else:
                (kind, ask), expected, good = case, 200, True
            start = time.perf_counter()
            traffic.session_local.detail = ""
            try:
                status, detail = ask(), traffic.detail()
            except Exception as e:  # a client error is an outcome too
                status, detail = -1, repr(e)[:200]
            outcomes.append(Outcome(kind, good, hostile_phase, status, expected, time.perf_counter() - start, detail))

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(opts.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = memory()
    lm = handles["LanguageModel"].stats.remote().result(timeout_s=60)

    good = [o for o in outcomes if o.good]
    bad = [o for o in outcomes if not o.good]
    failed_good = [o for o in good if o.status != 200]
    print(f"\nsoak: {len(outcomes)} requests ({len(good)} good, {len(bad)} hostile) in {wall:.0f} s, "
          f"{opts.concurrency} clients, plan {opts.requests}, limit {opts.max_seconds} s")
    print(f"good requests failed: {len(failed_good)} (target 0)")
    for o in failed_good[:5]:
        print(f"  {o.kind}: {o.status} {o.detail}")
    for label, hostile_phase in (("clean phases", False), ("hostile phases", True)):
        lat = [o.latency_s for o in good if o.hostile_phase == hostile_phase and o.status == 200]
        if lat:
            print(f"good latency, {label:14s}: p50 {np.percentile(lat, 50):.2f} s  p95 {np.percentile(lat, 95):.2f} s  ({len(lat)} requests)")
    by_kind: dict[str, list[Outcome]] = {}
    for o in good + bad:
        by_kind.setdefault(o.kind, []).append(o)
    wrong = 0
    print("by kind (expected status: got):")
    for kind, group in by_kind.items():
        statuses = sorted({o.status for o in group})
        mism = [o for o in group if o.status != o.expected]
        wrong += len(mism) if not group[0].good else 0
        lat = np.percentile([o.latency_s for o in group], 50)
        print(f"  {kind:34s} {len(group):3d} x  expected {group[0].expected}: got {statuses}  p50 {lat:.2f} s"
              + (f"  e.g. {mism[0].detail}" if mism else ""))
    print(f"hostile requests with another status than expected: {wrong}")
    if lm.cancelled_row_steps:
        steps = [s for s, _ in lm.cancelled_row_steps]
        print(f"clients that left mid-stream after 3 tokens: {lm.rows_cancelled} rows stopped after "
              f"{min(steps)}-{max(steps)} of 256 decoding steps")
    over_budget = []
    print("replica memory (peak RSS, MiB): before soak -> after, growth / budget; RSS now")
    for name in deployments:
        growth = after[name].peak_rss_bytes - before[name].peak_rss_bytes
        budget = sum(budgets[name].values())
        if after[name].pid != before[name].pid:
            print(f"  {name:16s} replaced during the soak (pid {before[name].pid} -> {after[name].pid})")
            over_budget.append(name)
            continue
        print(f"  {name:16s} {before[name].peak_rss_bytes / 2**20:7.0f} -> {after[name].peak_rss_bytes / 2**20:7.0f}, "
              f"+{growth / 2**20:.0f} / {budget / 2**20:.0f}; {after[name].rss_bytes / 2**20:.0f}")
        if growth > budget:
            over_budget.append(name)
    ok = not failed_good and not wrong and not over_budget
    print("targets met" if ok else f"targets missed: good failures {len(failed_good)}, wrong statuses {wrong}, over budget {over_budget}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="preset name or save_pretrained folder")
    parser.add_argument("--soak", action="store_true", help="soak under hostile clients instead of the A/B")
    parser.add_argument("--requests", type=int, default=24, help="A/B: requests per side and concurrency; soak: all")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="A/B: levels; soak: the first")
    parser.add_argument("--rounds", type=int, default=4, help="A/B: interleaved rounds per concurrency")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--frames", type=int, default=40, help="frames per synthetic video")
    parser.add_argument("--max-seconds", type=float, default=900, help="soak: stop sending after this long")
    parser.add_argument("--phase", type=int, default=24, help="soak: requests per clean or hostile phase")
    parser.add_argument("--bad-every", type=int, default=3, help="soak: every n-th request of a hostile phase is hostile")
    parser.add_argument("--num-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    opts = parser.parse_args(argv)
    if opts.soak:
        opts.concurrency = opts.concurrency[0]

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from serve_apps.ports import free_loopback_port

    own_ray = not ray.is_initialized()  # a test may share its session's Ray
    if own_ray:
        ray.init(num_cpus=opts.num_cpus, include_dashboard=False, log_to_driver=False)
    port = free_loopback_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        return soak(opts, port) if opts.soak else ab(opts, port)
    finally:
        serve.shutdown()
        if own_ray:
            ray.shutdown()


if __name__ == "__main__":
    sys.exit(main())
