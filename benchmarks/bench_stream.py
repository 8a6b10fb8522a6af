"""Live sessions over a long stream: encoder latency per frame, session memory and question latency,
early against late; and many sessions on one replica against one.

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
- Questions mid-stream: from the same two snapshots, after the push, a question is answered
  through the one generation path (`vlm3r_core.inference`: the session's features, the prompt,
  greedy decoding of `--answer-tokens` tokens), timed interleaved like the pushes. The prompt holds
  T <= K keyframes, so its cost is bounded whatever the stream's length.
- Sessions in parallel per replica: `--sessions` S sessions on the one model (one replica's
  encoders) take a push each in turn, S pushes per round, against S pushes into a single session
  in the same round (the order of the two sides alternates by round) for `--parallel-rounds`
  rounds. Their per-push medians and ratio say what S open sessions cost beyond their frames;
  with the memory of the S sessions this gives how many sessions a replica holds at a given
  update rate (`--session-fps`) per CPU core (or per GPU).

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

from vlm3r_core.inference import Question, VideoContext, generate, generation_inputs, load_model
from vlm3r_core.live import KeyframePolicy, LiveSession
from vlm3r_core.presets import PRESETS
from vlm3r_core.vlm import Vlm3rForConditionalGeneration, Vlm3rProcessor


def synthetic_stream(count: int, height: int, width: int, seed: int = 0):
    """`count` frames (H, W, 3) uint8: a random texture twice the frame size, panned one pixel per frame."""
    texture = np.random.default_rng(seed).integers(0, 256, (2 * height, 2 * width, 3), dtype=np.uint8)
    for i in range(count):
        dy, dx = (i // width) % height, i % width
        yield texture[dy : dy + height, dx : dx + width]


def timed(fn, device: torch.device) -> float:
    """Seconds of ``fn()``: wall clock with CUDA synchronised, CPU time of the process on the CPU."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    start = clock()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - start


def timed_push(session: LiveSession, frame: np.ndarray, timestamp_s: float, device: torch.device) -> float:
    """Seconds of one `push` (see `timed`)."""
    return timed(lambda: session.push(frame, timestamp_s), device)


QUESTION = Question("How many chair(s) are in this room?")


def ask(model: Vlm3rForConditionalGeneration, processor: Vlm3rProcessor, session: LiveSession, tokens: int) -> None:
    """Answers one question about what ``session`` has seen (the serving path without HTTP)."""
    live = session.features()
    context = VideoContext(live.features, live.timestamps, live.duration_s)
    generate(model, generation_inputs(model, processor, [QUESTION], [context]), tokens)


def parallel_sessions(model, policy: KeyframePolicy, args: argparse.Namespace, device: torch.device) -> dict:
    """S sessions taking a push each in turn against S pushes into one session, interleaved by round."""
    frames = list(synthetic_stream(args.parallel_rounds * args.sessions, args.height, args.width, seed=1))
    many = [LiveSession(model, policy, session_id=f"s{i}") for i in range(args.sessions)]
    one = LiveSession(model, policy)
    times: dict[str, list[float]] = {"many": [], "one": []}
    for r in range(args.parallel_rounds):
        chunk = frames[r * args.sessions : (r + 1) * args.sessions]
        sides = [("many", many), ("one", [one] * args.sessions)]
        for name, targets in sides if r % 2 == 0 else sides[::-1]:
            for i, (session, frame) in enumerate(zip(targets, chunk, strict=True)):
                t = (r if name == "many" else r * args.sessions + i) / args.fps
                times[name].append(timed_push(session, frame, t, device))
    return {
        "many_ms": 1000 * statistics.median(times["many"]),
        "one_ms": 1000 * statistics.median(times["one"]),
        "many_bytes": sum(s.memory_bytes() for s in many),
        "bound_bytes": LiveSession.memory_bound_bytes(model, policy),
    }


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, processor = load_model(args.preset, device)  # the whole model: the questions need the LLM
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
    asked: dict[str, list[float]] = {"early": [], "late": []}
    keyframes_asked = {}
    for _ in range(args.repeats):
        for which, (snapshot, frame, timestamp) in probes.items():
            restored = LiveSession.restore(model, snapshot)
            repeated[which].append(timed_push(restored, frame, timestamp, device))
            asked[which].append(timed(lambda s=restored: ask(model, processor, s, args.answer_tokens), device))
            keyframes_asked[which] = len(restored.keyframes)
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
        "ask_early_ms": 1000 * statistics.median(asked["early"]),
        "ask_late_ms": 1000 * statistics.median(asked["late"]),
        "ask_keyframes": keyframes_asked,
        **parallel_sessions(model, policy, args, device),
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
    parser.add_argument("--answer-tokens", type=int, default=8, help="tokens decoded per question")
    parser.add_argument("--sessions", type=int, default=8, help="S sessions on one replica (the default max_sessions_per_replica)")
    parser.add_argument("--parallel-rounds", type=int, default=32, help="rounds of S pushes per side")
    parser.add_argument("--session-fps", type=float, default=2.0, help="updates per second per session for the capacity line")
    args = parser.parse_args(argv)
    if args.window is None:
        args.window = max(1, min(10, (args.frames - 10) // 2))
    if args.window < 1 or args.frames < 10 + 2 * args.window:
        parser.error(f"--frames must be at least 10 + 2 * --window (>= 1), got {args.frames} and {args.window}")
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if min(args.answer_tokens, args.sessions, args.parallel_rounds) < 1 or args.session_fps <= 0:
        parser.error("--answer-tokens, --sessions and --parallel-rounds must be >= 1, --session-fps > 0")

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
    k = r["ask_keyframes"]
    print(
        f"question mid-stream ({args.answer_tokens} tokens, median of {args.repeats}, interleaved): after frame 10 "
        f"(T={k['early']}) {r['ask_early_ms']:.1f} ms, after frame {n - 1} (T={k['late']}) {r['ask_late_ms']:.1f} ms, "
        f"late/early {r['ask_late_ms'] / r['ask_early_ms']:.3f}"
    )
    s = args.sessions
    print(
        f"{s} sessions in parallel on one replica (median per push of {args.parallel_rounds * s}, interleaved by round): "
        f"{r['many_ms']:.2f} ms against one session {r['one_ms']:.2f} ms, {s} sessions/one {r['many_ms'] / r['one_ms']:.3f}"
    )
    unit = "GPU" if args.device.startswith("cuda") else "CPU core"
    print(
        f"capacity: {1000 / (r['many_ms'] * args.session_fps):.1f} sessions per {unit} at {args.session_fps:g} updates/s; "
        f"{s} sessions hold {r['many_bytes']:,} bytes now, at most {s * r['bound_bytes']:,} ({r['bound_bytes']:,} each)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
