"""QA generation speed: the library on one core against the reference's distance, and the whole job at scale.

    python benchmarks/bench_qa.py [--scenes 5] [--objects 30] [--frames 300] [--pairs 40]
    python benchmarks/bench_qa.py --job-scenes 100 1000 10000     # the whole job, one fresh process per size

Prints, for scenes of ``--objects`` boxes and ``--frames`` posed frames (built with
:func:`tests.datagen.scene_builder.random_scene`):

1. QA pairs per second and scenes per second per core for all 13 tasks (every question type),
   and whether the target holds: a 30-object scene yields all task types in under 2 s on one core;
2. the closest-point distance of ``--pairs`` random object pairs, exact
   (:func:`datagen.scene_graph.obb_distance`) against the reference's way (5 cm point grid of each
   box, interior quarter removed, brute-force ``cdist``; the reference's method reimplemented here,
   not its code), alternating pair by pair, as a speed ratio and the grid method's largest error;
3. with ``--job-scenes``: ``jobs/generate_qa.py`` end to end (``main``, local Ray, every core) on
   that many scenes of ``--job-objects`` boxes and ``--job-frames`` frames, each size in a fresh
   process: Ray start-up apart from the job; the job's wall time split into stage 1 (scenes ->
   per-scene rows), the blind-baseline passes and the shard writing; questions per CPU-second (the
   driver, the Ray workers and Ray's own processes, each sampled every 0.5 s: per core) against the
   library alone on one core in the same process (the job's efficiency); the cost per million
   questions at ``--vcpu-hour-usd``; and peak resident memory of the driver (exact, ``ru_maxrss``)
   and of the largest Ray worker (sampled), with each size's ratio to the smallest. The scenes'
   ``scene.json`` point at one shared tiny video of the right frame count and size, so every
   scene passes the job's video check without a video of its own.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy.spatial.distance import cdist

from datagen.qa import QAConfig, generate_scene_rows
from datagen.scene_graph import obb_distance
from datagen.tasks import TASKS
from tests.datagen.scene_builder import random_scene


def reference_box_points(
    center: np.ndarray, extent: np.ndarray, rotation: np.ndarray, spacing: float = 0.05
) -> np.ndarray:
    """The reference's sample of a box: ceil(e / 5 cm) grid points per axis over the full extent,
    keeping the points with some |coordinate| > e / 4 (a thick shell); half spacing if none."""
    while True:
        axes = [np.linspace(-e / 2, e / 2, max(2, math.ceil(e / spacing))) for e in extent]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)  # (N, 3) box coordinates
        shell = grid[np.any(np.abs(grid) > extent / 4, axis=1)]
        if len(shell):
            return center + shell @ rotation.T
        spacing /= 2


def reference_distance(a, b) -> float:
    return float(
        cdist(
            reference_box_points(a.center, a.extent, a.rotation),
            reference_box_points(b.center, b.extent, b.rotation),
        ).min()
    )


# ---- the whole job at scale -------------------------------------------------------------------------


def write_job_scenes(root: str, n: int, objects: int, frames: int, distinct: int = 50) -> None:
    """``n`` scenes (``distinct`` layouts, each under several scene ids, every fifth scene val),
    all pointing at one tiny video that matches their frame count and size."""
    from vlm3r_core import storage
    from vlm3r_core.video import write_video_stream

    layouts = [random_scene(np.random.default_rng(i), objects, frames, scene_id="x").to_dict() for i in range(min(n, distinct))]
    video = os.path.join(root, "shared-video.mp4")
    info = layouts[0]["video"]
    frame = np.full((info["height"], info["width"], 3), 128, np.uint8)
    write_video_stream(video, (frame for _ in range(info["num_frames"])), info["fps"])
    for i in range(n):
        scene = {**layouts[i % len(layouts)], "scene_id": f"bench-{i:05d}", "split": "val" if i % 5 == 0 else "train"}
        scene["video"] = {**scene["video"], "uri": video}
        storage.write_json(os.path.join(root, "scenes", "synthetic", f"bench-{i:05d}", "scene.json"), scene, indent=None)


class _ProcessSampler:
    """Samples this process and its descendants (Ray's processes) every ``period`` seconds: peak RSS,
    and each process's CPU seconds as last seen (a process that ends loses at most one period; the
    sampler's own CPU is left out of the driver's)."""

    def __init__(self, period: float = 0.5):
        import psutil

        self.me, self.period = psutil.Process(), period
        self.peak_worker = self.peak_total = 0
        self.cpu: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds)
        self.own_cpu = 0.0  # the sampler thread's
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def sample(self) -> None:
        start = time.thread_time()
        worker, total = 0, self.me.memory_info().rss
        self.cpu[self.me.pid] = ("driver", sum(self.me.cpu_times()[:2]))
        for child in self.me.children(recursive=True):
            try:
                with child.oneshot():
                    rss, name, cpu = child.memory_info().rss, child.name(), sum(child.cpu_times()[:2])
            except Exception:  # noqa: BLE001 - a process that just ended
                continue
            total += rss
            kind = "workers" if name.startswith("ray::") else "ray"
            if kind == "workers":
                worker = max(worker, rss)
            self.cpu[child.pid] = (kind, max(cpu, self.cpu.get(child.pid, ("", 0.0))[1]))
        self.peak_worker, self.peak_total = max(self.peak_worker, worker), max(self.peak_total, total)
        if threading.current_thread() is self._thread:
            self.own_cpu += time.thread_time() - start

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far per kind: this process (less the sampler), Ray's workers, Ray's other processes."""
        self.sample()
        out = {"driver": -self.own_cpu, "workers": 0.0, "ray": 0.0}
        for kind, seconds in self.cpu.values():
            out[kind] += seconds
        return out

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def run_job_child(n: int, workdir: str, objects: int, frames: int) -> dict:
    """One size, in this (fresh) process: scenes, Ray start-up, the job; figures as a dict."""
    import datagen.dataset
    import jobs.generate_qa
    from jobs.common import init_ray

    root, out = os.path.join(workdir, "data"), os.path.join(workdir, "out")
    start = time.perf_counter()
    write_job_scenes(root, n, objects, frames)
    scenes_s = time.perf_counter() - start
    # the library alone, one core, in this process: the baseline of the job's efficiency
    sample = [random_scene(np.random.default_rng(i), objects, frames, scene_id=f"lib-{i}") for i in range(3)]
    generate_scene_rows(sample[0], "v.mp4", QAConfig(route_planner="builtin"))
    cpu0, rows = time.process_time(), 0
    for scene in sample:
        rows += len(generate_scene_rows(scene, "v.mp4", QAConfig(route_planner="builtin")))
    library_qps = rows / (time.process_time() - cpu0)

    marks: dict[str, float] = {}

    def timed(name, fn):
        def call(*a, **k):
            marks.setdefault(f"{name}_start", time.perf_counter())
            result = fn(*a, **k)
            marks[f"{name}_end"] = time.perf_counter()
            return result

        return call

    jobs.generate_qa.write_outputs = timed("write", jobs.generate_qa.write_outputs)
    datagen.dataset.measure_bias = timed("bias", datagen.dataset.measure_bias)
    with _ProcessSampler() as sampler:
        start = time.perf_counter()
        init_ray()
        import ray

        cores = int(ray.cluster_resources()["CPU"])
        ray_start_s = time.perf_counter() - start
        cpu_before = sampler.cpu_seconds()
        start = time.perf_counter()
        code = jobs.generate_qa.main(["--scenes", root, "--out", out, "--route-planner", "builtin"])
        wall = time.perf_counter() - start
        cpu_after = sampler.cpu_seconds()
        ray.shutdown()
    manifest = json.loads(Path(out, "qa", "manifest.json").read_text())
    cpu = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
    return {
        "scenes": n, "code": code, "cores": cores, "questions": manifest["num_rows"], "shards": manifest["num_shards"],
        "scene_files_s": scenes_s, "ray_start_s": ray_start_s, "wall_s": wall,
        "stage1_s": marks["write_start"] - start, "bias_s": marks["bias_end"] - marks["bias_start"],
        "write_s": marks["write_end"] - marks["bias_end"], "cpu_s": cpu, "library_qps": library_qps,
        "driver_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_mib": sampler.peak_worker / 2**20, "total_peak_mib": sampler.peak_total / 2**20,
    }  # fmt: skip


def job_at_scale(sizes: list[int], objects: int, frames: int, vcpu_hour_usd: float) -> list[dict]:
    """Runs each size in a fresh process and prints the table and the ratios to the smallest size."""
    results = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-qa-{n}-") as workdir:
            cmd = [sys.executable, __file__, "--job-child", str(n), "--workdir", workdir,
                   "--job-objects", str(objects), "--job-frames", str(frames)]  # fmt: skip
            path = os.pathsep.join(p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")) if p)
            done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": path})
            lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
            if done.returncode != 0 or not lines:
                print(done.stdout[-3000:], done.stderr[-3000:], file=sys.stderr)
                raise RuntimeError(f"the job on {n} scenes failed (exit {done.returncode})")
            results.append(json.loads(lines[-1]))
    print(f"jobs/generate_qa.py end to end, local Ray, {objects} objects x {frames} frames per scene, official tasks:")
    print("  scenes | questions | shards | Ray start s | job wall s (stage 1 / bias / write) | CPU s (driver / workers / Ray)"
          " | questions per CPU-s | driver peak MiB | largest worker MiB")
    for r in results:
        cpu = r["cpu_s"]
        print(f"  {r['scenes']:6d} | {r['questions']:9d} | {r['shards']:6d} | {r['ray_start_s']:11.1f} | "
              f"{r['wall_s']:7.1f} ({r['stage1_s']:.1f} / {r['bias_s']:.1f} / {r['write_s']:.1f}) | "
              f"{sum(cpu.values()):7.1f} ({cpu['driver']:.1f} / {cpu['workers']:.1f} / {cpu['ray']:.1f}) | "
              f"{r['questions'] / sum(cpu.values()):8.1f} | {r['driver_peak_mib']:7.0f} | {r['worker_peak_mib']:7.0f}")  # fmt: skip
    for r in results:
        per_core = r["questions"] / sum(r["cpu_s"].values())
        usd = 1e6 / per_core / 3600 * vcpu_hour_usd
        print(f"  {r['scenes']} scenes: {per_core:.1f} questions/s per core (CPU-s of every process of the job), "
              f"{r['questions'] / r['wall_s'] / r['cores']:.1f} per core-second of wall time on {r['cores']} cores; "
              f"library alone {r['library_qps']:.1f}/s on one core: job/library {per_core / r['library_qps']:.3g}; "
              f"{1e6 / per_core / 3600:.2f} CPU-hours = ${usd:.2f} per million questions at ${vcpu_hour_usd}/vCPU-hour")  # fmt: skip
    small = results[0]
    for r in results[1:]:
        print(f"  {r['scenes']} / {small['scenes']} scenes: driver peak {r['driver_peak_mib'] / small['driver_peak_mib']:.2f}x, "
              f"largest worker {r['worker_peak_mib'] / small['worker_peak_mib']:.2f}x, "
              f"questions {r['questions'] / small['questions']:.1f}x")  # fmt: skip
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--scenes", type=int, default=5)
    p.add_argument("--objects", type=int, default=30)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--pairs", type=int, default=40, help="object pairs timed with both distance methods")
    p.add_argument("--job-scenes", type=int, nargs="*", default=[], help="run the whole job on each many scenes")
    p.add_argument("--job-objects", type=int, default=12, help="objects per scene of the job runs")
    p.add_argument("--job-frames", type=int, default=40, help="frames per scene of the job runs")
    p.add_argument("--vcpu-hour-usd", type=float, default=0.77 / 16, help="price of a vCPU-hour (m6i.4xlarge on demand)")
    p.add_argument("--job-child", type=int, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.job_child is not None:
        print(json.dumps(run_job_child(args.job_child, args.workdir, args.job_objects, args.job_frames)), flush=True)
        return 0
    if args.job_scenes:
        job_at_scale(args.job_scenes, args.job_objects, args.job_frames, args.vcpu_hour_usd)
    if not args.scenes:
        return 0
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_setaffinity") else None
    if affinity:
        os.sched_setaffinity(0, {sorted(affinity)[0]})  # one core, BLAS threads included

    scenes = [
        random_scene(np.random.default_rng(s), args.objects, args.frames, scene_id=f"bench-{s}")
        for s in range(args.scenes)
    ]
    generate_scene_rows(scenes[0], "v.mp4", QAConfig())  # warm-up (imports, caches)

    per_scene, types = [], Counter()
    rows_total = 0
    for scene in scenes:
        start = time.perf_counter()
        rows = generate_scene_rows(scene, "v.mp4", QAConfig())
        per_scene.append(time.perf_counter() - start)
        rows_total += len(rows)
        types.update({r["question_type"] for r in rows})
    total = sum(per_scene)
    all_types = {qt for name in QAConfig().tasks for qt in TASKS[name].question_types}
    print(f"QA generation, {args.scenes} scenes x {args.objects} objects x {args.frames} frames, 1 core:")
    print(f"  {rows_total / total:.0f} QA pairs/s, {args.scenes / total:.2f} scenes/s per core")
    print(f"  per scene: mean {np.mean(per_scene):.3f} s, max {max(per_scene):.3f} s")
    print(
        f"  question types produced in every scene: {sum(n == args.scenes for n in types.values())}/{len(all_types)}"
    )
    every = all(types[qt] == args.scenes for qt in all_types)
    print(
        f"  target 'all task types in < 2 s per scene': {'met' if every and max(per_scene) < 2 else 'NOT met'}"
    )

    objects = scenes[0].objects
    every_pair = list(combinations(objects, 2))
    pairs = [every_pair[i] for i in np.random.default_rng(0).permutation(len(every_pair))[: args.pairs]]
    exact, grid, t_exact, t_grid = [], [], 0.0, 0.0
    for a, b in pairs:  # the two methods alternate pair by pair, so a change in machine load hits both alike
        start = time.perf_counter()
        exact.append(obb_distance(a.center, a.extent, a.rotation, b.center, b.extent, b.rotation))
        t_exact, start = t_exact + time.perf_counter() - start, time.perf_counter()
        grid.append(reference_distance(a, b))
        t_grid += time.perf_counter() - start
    error = np.abs(np.array(grid) - np.array(exact))
    print(f"closest-point distance, {len(pairs)} random object pairs of one scene:")
    print(
        f"  exact OBB distance {t_exact / len(pairs) * 1e3:.2f} ms/pair; reference 5 cm grid + cdist {t_grid / len(pairs) * 1e3:.1f} ms/pair"
    )
    print(
        f"  speed-up {t_grid / t_exact:.1f}x; grid error max {error.max() * 100:.1f} cm, mean {error.mean() * 100:.1f} cm"
    )
    if affinity:
        os.sched_setaffinity(0, affinity)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
