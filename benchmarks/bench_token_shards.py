"""Token shard size and read/write speed: our parquet encoding against pyarrow's defaults, same run.

    python benchmarks/bench_token_shards.py [--videos 4] [--frames 32] [--no-vision-features]

Builds ``--videos`` videos of tokens at the ``vlm3r-7b`` sizes (CUT3R 432 px: camera (T, 1, 768) and
patch (T, 729, 768); SigLIP 384 px: (T, 729, 1152); poses (T, 7)), fills them with Gaussian values
(a stand-in for activations; real activations compress about as little), writes one shard with
``vlm3r_core.tokens.write_token_shard`` (BYTE_STREAM_SPLIT + zstd, no dictionaries) and the same
table with ``pyarrow.parquet.write_table`` defaults (dictionary + snappy), reads both back, and
prints bytes per video (with the raw fp16 size), process CPU seconds per video for writing and
reading (ours includes building the Arrow table from numpy; the four timings alternate for
``--repeats`` rounds and each one's fastest is kept), and the ratios default / ours.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq

from vlm3r_core.tokens import EncoderInfo, VideoTokens, read_token_table, write_token_shard

N_PATCHES, C_CUT3R, P_SIGLIP, C_SIGLIP = 729, 768, 729, 1152


def make_videos(count: int, frames: int, vision: bool, seed: int = 0) -> list[VideoTokens]:
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32).astype(np.float16)

    return [
        VideoTokens(
            video_id=f"scannet/scene{i:04d}_00",
            frame_indices=np.linspace(0, 899, frames, dtype=int).astype(np.int64),
            timestamps=np.linspace(0, 899, frames, dtype=int) / 30.0,
            duration_s=30.0,
            camera_tokens=normal(frames, 1, C_CUT3R),
            patch_tokens=normal(frames, N_PATCHES, C_CUT3R),
            vision_features=normal(frames, P_SIGLIP, C_SIGLIP) if vision else None,
            poses=normal(frames, 7).astype(np.float32),
        )
        for i in range(count)
    ]


def cpu_seconds(fn) -> tuple[float, object]:
    start = time.process_time()
    result = fn()
    return time.process_time() - start, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--videos", type=int, default=4)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--no-vision-features", action="store_true")
    p.add_argument("--repeats", type=int, default=3, help="alternating rounds of the four timings, fastest kept")
    a = p.parse_args(argv)
    vision = not a.no_vision_features
    encoder = EncoderInfo("vlm3r-7b", "", 432, a.frames, 384 if vision else 0)
    videos = make_videos(a.videos, a.frames, vision)
    raw = sum(getattr(videos[0], n).size * 2 for n in ("camera_tokens", "patch_tokens", "vision_features") if getattr(videos[0], n) is not None)

    with tempfile.TemporaryDirectory() as tmp:
        ours_uri = f"{tmp}/ours/part-0.parquet"
        ours_bytes = write_token_shard(ours_uri, videos, encoder)
        table = read_token_table(ours_uri)
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=1)
        base_data = buf.getvalue()
        base_bytes = len(base_data)
        timings = {
            "ours_write": lambda: write_token_shard(ours_uri, videos, encoder),
            "base_write": lambda: pq.write_table(table, io.BytesIO(), row_group_size=1),
            "ours_read": lambda: read_token_table(ours_uri),
            "base_read": lambda: pq.read_table(io.BytesIO(base_data)),
        }
        seconds = {name: [] for name in timings}
        for _ in range(a.repeats):  # the four alternate, so a change in machine load hits both encodings alike
            for name, fn in timings.items():
                seconds[name].append(cpu_seconds(fn)[0])
    ours_write, base_write, ours_read, base_read = (min(seconds[n]) for n in timings)

    n = a.videos
    print(f"token shards: {n} videos x {a.frames} frames, vision_features={vision}, fp16 tensors; raw tensor bytes "
          f"{raw / 2**20:.2f} MiB per video; fastest of {a.repeats} alternating rounds")
    for name, size, w, r in (("ours (bss+zstd)", ours_bytes, ours_write, ours_read), ("pyarrow default", base_bytes, base_write, base_read)):
        print(f"  {name:16s} {size / n / 2**20:7.2f} MiB/video  write {w / n:.3f} s/video  read {r / n:.3f} s/video (CPU)")
    print(f"  ratio default/ours: size {base_bytes / ours_bytes:.2f}x, write {base_write / ours_write:.2f}x, "
          f"read {base_read / ours_read:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
