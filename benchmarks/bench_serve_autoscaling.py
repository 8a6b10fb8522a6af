"""Split autoscaling on a real multi-node Ray cluster: the encoder and the LLM deployments scale on their own.

    python benchmarks/bench_serve_autoscaling.py                         # brings up cluster/local, tears it down
    python benchmarks/bench_serve_autoscaling.py --state /tmp/vlm3r-local   # a cluster up.sh started (left running)
    python benchmarks/bench_serve_autoscaling.py --phase-s 90 --concurrency 8 --max-tokens 128

Deploys ``cluster/local/serve-local.yaml`` with ``serve deploy`` (through the dashboard, with the
cluster's auth token) onto the loopback cluster of ``cluster/local/`` (a head and two worker nodes,
each model replica taking one ``gpu_a10g``, the stand-in for a GPU), then drives bounded load over
HTTP on 127.0.0.1 with the ``openai`` client, in phases:

1. ``encoder``: a new video in every request and one answer token: the GeometryEncoder (decode,
   SigLIP, CUT3R) does the work, the LanguageModel little.
2. ``cool-down``: no load until both deployments are back to one replica.
3. ``llm``: the same video in every request (the encoder answers from its token cache) and long
   answers (``--max-tokens``): the LanguageModel does the work.
4. ``cool-down``.

A phase ends ``--hold-s`` seconds after its deployment has its second replica running (or after
``--phase-s``). Every second the dashboard's Serve API gives each deployment's running replicas
and target; every request's latency is recorded. Prints per phase: the most replicas each
deployment had, when the stressed one reached 2 and when it was back to 1, and p50/p95 latency
while it had 1 replica against after its second one ran (the baseline: the same load, the same
run). Writes ``autoscaling.json`` and ``autoscaling.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_serve import synthetic_videos  # noqa: E402

DEPLOYMENTS = ("GeometryEncoder", "LanguageModel")
STRESSED = {"encoder": "GeometryEncoder", "llm": "LanguageModel"}
QUESTION = "How many chairs are in this room?"


def load_local_cluster():
    """``cluster/local/local_cluster.py`` as a module (it is a script, not part of a package)."""
    name = "vlm3r_local_cluster"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "cluster" / "local" / "local_cluster.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@dataclass
class Sample:
    t: float
    running: dict[str, int]
    target: dict[str, int]
    nodes: dict[str, list[str]]


@dataclass
class Request:
    phase: str
    t: float
    latency_s: float
    ok: bool
    completion_tokens: int = 0
    error: str = ""


@dataclass
class Run:
    started: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    phases: list[dict] = field(default_factory=list)  # name, start, end (s since started)

    def now(self) -> float:
        return time.monotonic() - self.started


class ServeStatus:
    """Replica counts of the application's deployments, from the dashboard's Serve API."""

    def __init__(self, dashboard_url: str, token: str, app: str, node_names: dict[str, str]):
        self.url, self.token, self.app, self.node_names = dashboard_url, token, app, node_names

    def read(self) -> dict:
        request = urllib.request.Request(f"{self.url}/api/serve/applications/",
                                         headers={"Authorization": f"Bearer {self.token}"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def sample(self, t: float) -> Sample | None:
        app = self.read().get("applications", {}).get(self.app)
        if not app:
            return None
        running, target, nodes = {}, {}, {}
        for name in DEPLOYMENTS:
            dep = app["deployments"].get(name, {})
            live = [r for r in dep.get("replicas", []) if r.get("state") == "RUNNING"]
            running[name] = len(live)
            target[name] = int(dep.get("target_num_replicas") or 0)
            nodes[name] = [self.node_names.get(r.get("node_id", ""), r.get("node_id", "")[:8]) for r in live]
        return Sample(t, running, target, nodes)

    def app_status(self) -> str:
        return self.read().get("applications", {}).get(self.app, {}).get("status", "")


class Sampler(threading.Thread):
    def __init__(self, status: ServeStatus, run: Run, interval_s: float = 1.0):
        super().__init__(daemon=True)
        self.status, self.run_, self.interval_s = status, run, interval_s
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                sample = self.status.sample(self.run_.now())
                if sample:
                    self.run_.samples.append(sample)
            except OSError:
                pass
            self.stop.wait(self.interval_s)

    def latest(self) -> Sample | None:
        return self.run_.samples[-1] if self.run_.samples else None


def ask(client, url: str, max_tokens: int) -> tuple[float, int]:
    start = time.perf_counter()
    response = client.chat.completions.create(
        model="vlm3r",
        max_tokens=max_tokens,
        messages=[{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                               {"type": "text", "text": QUESTION}]}],
    )  # fmt: skip
    return time.perf_counter() - start, response.usage.completion_tokens


def load_phase(run: Run, sampler: Sampler, base_url: str, name: str, videos: list[str], max_tokens: int,
               concurrency: int, phase_s: float, hold_s: float) -> None:  # fmt: skip
    """``concurrency`` clients send requests (``videos`` in turn) until the stressed deployment has
    had 2 running replicas for ``hold_s`` seconds, or ``phase_s`` passed; at most one request per video."""
    from openai import OpenAI

    client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)
    stressed = STRESSED[name]
    start = run.now()
    deadline = start + phase_s
    scaled_at: list[float] = []
    lock = threading.Lock()
    cursor = iter(range(len(videos)))

    def done() -> bool:
        latest = sampler.latest()
        if latest and latest.t > start and latest.running.get(stressed, 0) >= 2 and not scaled_at:
            scaled_at.append(latest.t)
        return run.now() >= deadline or bool(scaled_at and run.now() >= scaled_at[0] + hold_s)

    def client_loop() -> None:
        while not done():
            with lock:
                i = next(cursor, None)
            if i is None:
                return
            t = run.now()
            try:
                latency, tokens = ask(client, videos[i], max_tokens)
                run.requests.append(Request(name, t, latency, True, tokens))
            except Exception as e:  # a failed request is a result too; the load goes on
                run.requests.append(Request(name, t, run.now() - t, False, error=f"{type(e).__name__}: {e}"[:200]))

    with ThreadPoolExecutor(concurrency) as pool:
        for f in [pool.submit(client_loop) for _ in range(concurrency)]:
            f.result()
    run.phases.append({"name": name, "start": start, "end": run.now()})


def cool_down(run: Run, sampler: Sampler, max_s: float) -> None:
    """No load until every deployment is back to one running replica (at most ``max_s`` seconds)."""
    start = run.now()
    while run.now() < start + max_s:
        time.sleep(1.0)
        latest = sampler.latest()
        if latest and latest.t > start + 2 and all(latest.running[d] == 1 and latest.target[d] == 1 for d in DEPLOYMENTS):
            break
    run.phases.append({"name": "cool-down", "start": start, "end": run.now()})


def summarize(run: Run) -> dict:
    """Per load phase: the most replicas of each deployment during the phase and its cool-down, when
    the stressed one reached 2 and was back to 1, latencies before and after its second replica."""
    out = {}
    phases = run.phases
    for i, phase in enumerate(phases):
        if phase["name"] not in STRESSED:
            continue
        stressed = STRESSED[phase["name"]]
        end = phases[i + 1]["end"] if i + 1 < len(phases) else phase["end"]
        window = [s for s in run.samples if phase["start"] <= s.t <= end]
        during = [s for s in run.samples if phase["start"] <= s.t <= phase["end"]]
        up = next((s.t for s in window if s.running[stressed] >= 2), None)
        down = next((s.t for s in window if up is not None and s.t > up and s.running[stressed] == 1), None)
        reqs = [r for r in run.requests if r.phase == phase["name"] and r.ok]
        before = [r.latency_s for r in reqs if up is None or r.t + r.latency_s <= up]
        after = [r.latency_s for r in reqs if up is not None and r.t >= up]
        pct = (lambda xs, q: float(np.percentile(xs, q)) if xs else None)  # noqa: E731
        out[phase["name"]] = {
            "stressed": stressed,
            "seconds": phase["end"] - phase["start"],
            "requests": len([r for r in run.requests if r.phase == phase["name"]]),
            "failed": len([r for r in run.requests if r.phase == phase["name"] and not r.ok]),
            "max_running": {d: max((s.running[d] for s in during), default=0) for d in DEPLOYMENTS},
            "max_running_incl_cooldown": {d: max((s.running[d] for s in window), default=0) for d in DEPLOYMENTS},
            "scaled_up_after_s": None if up is None else up - phase["start"],
            "back_to_one_after_load_s": None if down is None else down - phase["end"],
            "p50_one_replica_s": pct(before, 50), "p95_one_replica_s": pct(before, 95),
            "p50_two_replicas_s": pct(after, 50), "p95_two_replicas_s": pct(after, 95),
            "completion_tokens_mean": float(np.mean([r.completion_tokens for r in reqs])) if reqs else None,
            "replica_nodes": sorted({n for s in during for n in s.nodes[stressed]}),
        }  # fmt: skip
    return out


def plot(run: Run, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 4.6), sharex=True, dpi=80)
    colors = {"GeometryEncoder": "tab:blue", "LanguageModel": "tab:orange"}
    shade = {"encoder": "tab:blue", "llm": "tab:orange"}
    for ax in (ax1, ax2):
        for phase in run.phases:
            if phase["name"] in shade:
                ax.axvspan(phase["start"], phase["end"], color=shade[phase["name"]], alpha=0.08)
    t = [s.t for s in run.samples]
    for i, d in enumerate(DEPLOYMENTS):
        offset = (i - 0.5) * 0.04  # keep equal counts apart
        ax1.step(t, [s.running[d] + offset for s in run.samples], where="post", color=colors[d], label=f"{d} running")
        ax1.step(t, [s.target[d] + offset for s in run.samples], where="post", color=colors[d], ls=":", lw=1,
                 label=f"{d} target")  # fmt: skip
    ax1.set_ylabel("replicas")
    ax1.set_yticks([0, 1, 2])
    ax1.legend(fontsize=7, loc="upper right", ncol=2)
    ax1.set_title("Serve autoscaling on the 3-node loopback cluster (shaded: encoder load, then LLM load)", fontsize=9)
    for name, marker in (("encoder", "o"), ("llm", "s")):
        reqs = [r for r in run.requests if r.phase == name and r.ok]
        ax2.scatter([r.t + r.latency_s for r in reqs], [r.latency_s for r in reqs], s=6, marker=marker,
                    color=shade[name], label=f"{name} phase")  # fmt: skip
    ax2.set_ylabel("latency (s)")
    ax2.set_xlabel("time (s)")
    ax2.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def phase_videos(max_requests: int, frames: int) -> dict[str, list[str]]:
    """The videos each phase sends (data URLs): a new one per request under encoder load, one
    repeated video under LLM load (after its first request the encoder answers from its token
    cache), and a warm-up video neither phase sends."""
    videos = synthetic_videos(max_requests + 2, frames)
    return {"encoder": videos[:max_requests], "llm": [videos[-2]] * max_requests, "warm-up": [videos[-1]]}


def deploy(cluster, config: Path, model: str, port: int, workdir: Path) -> Path:
    """``serve deploy`` of ``config`` with its HTTP port and model replaced; returns the written config."""
    data = yaml.safe_load(config.read_text())
    data["http_options"]["port"] = port
    data["applications"][0]["args"]["model"] = model
    path = workdir / "serve-config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {**os.environ, **cluster.client_env()}
    serve = Path(sys.executable).with_name("serve")
    subprocess.run([str(serve), "deploy", str(path)], env=env, check=True, timeout=300, cwd=ROOT,
                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    return path


def wait_running(status: ServeStatus, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            last = status.app_status()
            if last == "RUNNING":
                return
        except OSError as e:
            last = str(e)
        time.sleep(2.0)
    raise TimeoutError(f"application not RUNNING within {timeout_s:.0f} s (last: {last})")


def benchmark(cluster, opts, workdir: Path) -> tuple[Run, dict]:
    names = {v: k for k, v in cluster.node_ids().items()}
    status = ServeStatus(cluster.dashboard_url, cluster.token, "vlm3r", names)
    running = status.read()  # Serve keeps its HTTP port once started: reuse it
    port = running["http_options"]["port"] if running.get("controller_info") else load_local_cluster().free_port()
    deploy(cluster, Path(opts.config), opts.model, port, workdir)
    wait_running(status, opts.deploy_timeout_s)
    base_url = f"http://127.0.0.1:{port}/v1"
    videos = phase_videos(opts.max_requests, opts.frames)
    from openai import OpenAI

    ask(OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=300), videos["warm-up"][0], 1)
    run = Run()
    sampler = Sampler(status, run)
    sampler.start()
    try:
        cool_down(run, sampler, opts.cooldown_s)  # start from one replica each
        load_phase(run, sampler, base_url, "encoder", videos["encoder"], 1, opts.concurrency,
                   opts.phase_s, opts.hold_s)  # fmt: skip
        cool_down(run, sampler, opts.cooldown_s)
        load_phase(run, sampler, base_url, "llm", videos["llm"], opts.max_tokens,
                   opts.concurrency, opts.phase_s, opts.hold_s)  # fmt: skip
        cool_down(run, sampler, opts.cooldown_s)
    finally:
        sampler.stop.set()
        sampler.join(timeout=15)
    return run, summarize(run)


def report(summary: dict) -> None:
    fmt = (lambda v: "-" if v is None else f"{v:.2f}")  # noqa: E731
    for name, s in summary.items():
        other = next(d for d in DEPLOYMENTS if d != s["stressed"])
        print(f"{name:8s} phase ({s['seconds']:.0f} s, {s['requests']} requests, {s['failed']} failed): "
              f"{s['stressed']} up to {s['max_running'][s['stressed']]} replicas (2nd running after "
              f"{fmt(s['scaled_up_after_s'])} s, back to 1 {fmt(s['back_to_one_after_load_s'])} s after the load; "
              f"on {', '.join(s['replica_nodes'])}), {other} stayed at {s['max_running'][other]}", flush=True)  # fmt: skip
        ratio = (s["p50_one_replica_s"] / s["p50_two_replicas_s"]) if s["p50_one_replica_s"] and s["p50_two_replicas_s"] else None
        print(f"         latency p50/p95 with 1 replica {fmt(s['p50_one_replica_s'])}/{fmt(s['p95_one_replica_s'])} s, "
              f"with 2 {fmt(s['p50_two_replicas_s'])}/{fmt(s['p95_two_replicas_s'])} s "
              f"(1-replica/2-replica p50: {fmt(ratio)}x); mean answer {fmt(s['completion_tokens_mean'])} tokens",
              flush=True)  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--state", help="state folder of a running cluster/local cluster (default: start one)")
    parser.add_argument("--config", default=str(ROOT / "cluster" / "local" / "serve-local.yaml"))
    parser.add_argument("--model", default="tiny", help="preset or save_pretrained folder/URI")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128, help="answer length in the llm phase")
    parser.add_argument("--phase-s", type=float, default=150.0, help="longest load phase")
    parser.add_argument("--hold-s", type=float, default=20.0, help="load kept after the 2nd replica runs")
    parser.add_argument("--cooldown-s", type=float, default=90.0, help="longest wait for one replica each")
    parser.add_argument("--max-requests", type=int, default=400, help="most requests per phase")
    parser.add_argument("--frames", type=int, default=32, help="frames per synthetic video")
    parser.add_argument("--deploy-timeout-s", type=float, default=300.0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder for the JSON and PNG")
    parser.add_argument("--plot", help="where to write the plot (default: <out>/autoscaling.png)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    lc = load_local_cluster()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="v16s-", dir="/tmp") as tmp:
        own = opts.state is None
        cluster = lc.up(Path(tmp) / "cluster") if own else lc.Cluster.load(opts.state)
        try:
            run, summary = benchmark(cluster, opts, Path(tmp))
        finally:
            if own:
                lc.down(cluster)
    report(summary)
    (out / "autoscaling.json").write_text(json.dumps(
        {"options": vars(opts), "summary": summary, "phases": run.phases,
         "samples": [asdict(s) for s in run.samples], "requests": [asdict(r) for r in run.requests]}, indent=1))  # fmt: skip
    png = Path(opts.plot) if opts.plot else out / "autoscaling.png"
    plot(run, png)
    print(f"wrote {out / 'autoscaling.json'} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
