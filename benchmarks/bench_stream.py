"""Live sessions over a long stream: encoder latency per frame and session memory, early against late.

    python benchmarks/bench_stream.py                         # tiny, 2000 frames, CPU, fp32
    python benchmarks/bench_stream.py --frames 20000 --keyframes 32
    python benchmarks/bench_stream.py --preset vlm3r-7b --device cuda --frames 500   # needs the weights

Pushes N synthetic frames (a drifting random texture) into one `vlm3r_core.live.LiveSession`
with no rate limit, so every frame runs CUT3R's recurrent step and SigLIP. The baseline is the
same session early in the stream.

- Latency: the session is snapshotted just before frame 10 and just before frame N - 1; after
  the stream both snapshots are restored in turn and the push of that frame is timed `--repeats`
  times, alternating early and late so that changing load hits both alike. The medians and their
  ratio late/early are printed, and the in-stream medians of frames 10.. and of the last frames.
- Memory: the session's bytes (`memory_bytes`) at their peak in the first quarter after warm-up
  against the last quarter, and the bound (`memory_bound_bytes`).

A recurrent state of fixed size and a bounded keyframe set should keep both ratios near 1
(target: within 20%). Timings are wall clock around `push` on CUDA (synchronised); on the CPU they
are the process's CPU time (`time.process_time`), which other processes' load on a shared machine
does not inflate (with `--threads 1`, the push's latency on an idle core).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from vlm3r_core.live import KeyframePolicy, LiveSession
from vlm3r_core.presets import PRESETS, get_preset
from vlm3r_core.vlm import Vlm3rForConditionalGeneration


def synthetic_stream(count: int, height: int, width: int, seed: int = 0):
    """`count` frames (H, W, 3) uint8: a random texture twice the frame size, panned one pixel per frame."""
    texture = np.random.default_rng(seed).integers(0, 256, (2 * height, 2 * width, 3), dtype=np.uint8)
    for i in range(count):
        dy, dx = (i // width) % height, i % width
        yield texture[dy : dy + height, dx : dx + width]


def timed_push(session: LiveSession, frame: np.ndarray, timestamp_s: float, device: torch.device) -> float:
    """Seconds of one `push`: wall clock with CUDA synchronised, CPU time of the process on the CPU."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    start = clock()
    session.push(frame, timestamp_s)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    config = get_preset(args.preset)
    model = Vlm3rForConditionalGeneration.from_config(config, device=device, components=("vision_tower", "cut3r"))
    policy = KeyframePolicy(max_keyframes=args.keyframes)
    session = LiveSession(model, policy)
    latencies, held, probes = [], [], {}
    w, n = args.window, args.frames
    for i, frame in enumerate(synthetic_stream(n, args.height, args.width)):
        if i in (10, n - 1):  # the session just before this frame, and the frame
            probes["early" if i == 10 else "late"] = (session.snapshot(), frame.copy(), i / args.fps)
        latencies.append(timed_push(session, frame, i / args.fps, device))
        held.append(session.memory_bytes())
    repeated = {"early": [], "late": []}
    for _ in range(args.repeats):
        for which, (snapshot, frame, timestamp) in probes.items():
            repeated[which].append(timed_push(LiveSession.restore(model, snapshot), frame, timestamp, device))
    warm = min(2 * args.keyframes + 1, n // 4)  # the keyframe set fills up and is first thinned
    early_bytes, late_bytes = max(held[warm : max(warm + 1, n // 4)]), max(held[3 * n // 4 :])
    return {
        "early_ms": 1000 * statistics.median(repeated["early"]),
        "late_ms": 1000 * statistics.median(repeated["late"]),
        "stream_early_ms": 1000 * statistics.median(latencies[10 : 10 + w]),
        "stream_late_ms": 1000 * statistics.median(latencies[n - w :]),
        "early_bytes": early_bytes,
        "late_bytes": late_bytes,
        "bound_bytes": LiveSession.memory_bound_bytes(model, policy),
        "keyframes": len(session.keyframes),
        "stride": session.stride,
        "snapshot_bytes": len(session.snapshot()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--frames", type=int, default=2000, help="N frames pushed")
    parser.add_argument("--window", type=int, default=None, help="frames per latency median (default 10, fewer for short runs)")
    parser.add_argument("--repeats", type=int, default=15, help="timed pushes of frame 10 and of frame N-1 each")
    parser.add_argument("--keyframes", type=int, default=32, help="K, KeyframePolicy.max_keyframes")
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.window is None:
        args.window = max(1, min(10, (args.frames - 10) // 2))
    if args.window < 1 or args.frames < 10 + 2 * args.window:
        parser.error(f"--frames must be at least 10 + 2 * --window (>= 1), got {args.frames} and {args.window}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")

    r = run(args)
    n, w = args.frames, args.window
    clock = "wall clock" if args.device.startswith("cuda") else f"CPU time, {args.threads} thread(s)"
    print(f"preset {args.preset}, {n} frames of {args.width}x{args.height}, K={args.keyframes}, {args.device} ({clock})")
    print(
        f"push latency (median of {args.repeats}, interleaved): frame 10 {r['early_ms']:.2f} ms, "
        f"frame {n - 1} {r['late_ms']:.2f} ms, late/early {r['late_ms'] / r['early_ms']:.3f}"
    )
    print(
        f"in-stream medians of {w}: frames 10-{9 + w} {r['stream_early_ms']:.2f} ms, frames {n - w}-{n - 1} "
        f"{r['stream_late_ms']:.2f} ms, late/early {r['stream_late_ms'] / r['stream_early_ms']:.3f}"
    )
    print(
        f"session bytes (peak): first quarter {r['early_bytes']:,}, last quarter {r['late_bytes']:,}, "
        f"late/early {r['late_bytes'] / r['early_bytes']:.3f}; bound {r['bound_bytes']:,}"
    )
    print(f"at the end: {r['keyframes']} keyframes, stride {r['stride']}, snapshot {r['snapshot_bytes']:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
