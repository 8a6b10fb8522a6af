"""CUT3R token extraction: frames per second and peak memory, ours against the reference way.

    python benchmarks/bench_cut3r.py                                  # tiny and released, CPU, fp32
    python benchmarks/bench_cut3r.py --presets cut3r-512-dpt --device cuda --dtype bf16 --videos 8 --frames 32

Ours: `Cut3r.encode_video` on B videos in lock-step (token path: pose and point heads skipped,
`torch.no_grad`). Baseline, what the reference inference does for VLM-3R: one video at a time
(batch 1) through the whole model with every head (pose, DPT self/cross/RGB). Both run the same
trunk weights on the same frames (432x432 by default, a 27x27 grid) in the same run; each variant
runs in its own fresh process so that its peak memory can be measured alone (CPU: peak RSS during
the run, from /proc/self/status after resetting it; CUDA: `torch.cuda.max_memory_allocated`).
The variants alternate and each one's fastest run is kept (`--repeats`), so that a shared
machine's changing load hits both alike. The script also prints the bytes per video of a token
shard, computed from the shapes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import torch

from vlm3r_core.geometry import Cut3r, get_cut3r_config

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SIGLIP_FEATURE_DIM = 1152  # SigLIP-so400m vision features, stored beside the CUT3R tokens
SIGLIP_TOKENS = 729  # 27x27 at 384x384


def _read_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM (peak RSS) on Linux
        f.write("5")


def run_variant(variant: str, preset: str, args: argparse.Namespace) -> dict:
    """Builds the model and times one pass over B videos of T frames (in a fresh process)."""
    torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    baseline = variant == "baseline"
    config = get_cut3r_config(preset, enable_pose_head=baseline, enable_point_heads=baseline)
    torch.manual_seed(0)
    with torch.device(device):
        model = Cut3r.from_config(config).to(dtype)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    frames = torch.rand(
        args.videos, args.frames, 3, args.height, args.width, generator=torch.Generator().manual_seed(1)
    )
    frames = (frames * 2 - 1).to(device)

    model.encode_video(frames[:1, :1, :, :64, :64])  # warm-up: kernels, allocator (64x64, cheap)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        _reset_peak_rss()
    rss_before = _read_status_kib("VmRSS") * 1024 if device.type == "cpu" else 0

    start = time.perf_counter()
    if baseline:
        for b in range(args.videos):
            out = model.encode_video(frames[b : b + 1])
    else:
        out = model.encode_video(frames)
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _read_status_kib("VmHWM") * 1024
    seconds = time.perf_counter() - start
    return {
        "variant": variant,
        "fps": args.videos * args.frames / seconds,
        "seconds": seconds,
        "peak_bytes": peak,
        "transient_bytes": peak - rss_before if device.type == "cpu" else peak - weight_bytes,
        "weight_bytes": weight_bytes,
        "tokens_shape": tuple(out.patch_tokens.shape[1:]),
    }


def _in_fresh_process(variant: str, preset: str, args: argparse.Namespace) -> dict:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(run_variant, (variant, preset, args))


def shard_bytes_per_video(frames: int, num_patches: int, dim: int, with_vision: bool) -> int:
    """Bytes of one video's token row in fp16: T x (1 + N) x C (+ T x 729 x 1152 SigLIP features)."""
    cut3r = frames * (1 + num_patches) * dim * 2
    return cut3r + (frames * SIGLIP_TOKENS * SIGLIP_FEATURE_DIM * 2 if with_vision else 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "cut3r-512-dpt"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--height", type=int, default=432)
    parser.add_argument("--width", type=int, default=432)
    parser.add_argument("--videos", type=int, default=None, help="B (default: 4 tiny, 2 released)")
    parser.add_argument("--frames", type=int, default=None, help="T (default: 8 tiny, 2 released)")
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs per variant, best kept (default: 3 tiny, 1 released)"
    )
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--shard-frames", type=int, default=32, help="T for the token-shard size")
    args = parser.parse_args(argv)
    if args.dtype != "fp32" and args.device == "cpu":
        parser.error("bf16/fp16 are for GPUs; use --device cuda")

    for preset in args.presets:
        run_args = argparse.Namespace(**vars(args))
        tiny = preset == "tiny"
        run_args.videos = args.videos or (4 if tiny else 2)
        run_args.frames = args.frames or (8 if tiny else 2)
        print(f"\n== {preset}: B={run_args.videos} videos x T={run_args.frames} frames, "
              f"{args.height}x{args.width}, {args.device} {args.dtype}, {args.threads} threads")  # fmt: skip
        # Alternate the variants and keep each one's fastest run: the load of a shared machine
        # changes between runs, and alternating exposes both variants to it alike.
        runs = {"baseline": [], "ours": []}
        for _ in range(args.repeats or (3 if tiny else 1)):
            for variant in runs:
                runs[variant].append(_in_fresh_process(variant, preset, run_args))
        results = {v: min(r, key=lambda x: x["seconds"]) for v, r in runs.items()}
        for r in results.values():
            print(f"  {r['variant']:>8}: {r['fps']:8.2f} frames/s  ({r['seconds']:.1f} s)  peak {r['peak_bytes'] / 2**20:8.0f} MiB"
                  f"  (run transient {r['transient_bytes'] / 2**20:7.0f} MiB, weights {r['weight_bytes'] / 2**20:6.0f} MiB)")  # fmt: skip
        ours, base = results["ours"], results["baseline"]
        print(f"  ratio ours/baseline: {ours['fps'] / base['fps']:.2f}x frames/s, "
              f"{ours['peak_bytes'] / base['peak_bytes']:.2f}x peak memory")  # fmt: skip

        num_patches, dim = ours["tokens_shape"][1], ours["tokens_shape"][2]
        tokens = shard_bytes_per_video(args.shard_frames, num_patches, dim, with_vision=False)
        both = shard_bytes_per_video(args.shard_frames, num_patches, dim, with_vision=True)
        print(f"  token shard per video (T={args.shard_frames}, N={num_patches}, C={dim}, fp16): "
              f"{tokens / 1e6:.1f} MB CUT3R tokens, {both / 1e6:.1f} MB with SigLIP features (729 x 1152)")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
