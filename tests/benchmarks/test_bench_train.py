"""Smoke test of benchmarks/bench_train.py at minimal size (in its own process: it sets up a DeepSpeed
process group): both sides step and the ratio comes from their timings."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_train_steps_both_sides_and_prints_the_ratio():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"),
           "--frames", "2", "--batch-size", "1", "--steps", "1", "--frame-size", "32"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    tokens = float(re.search(r"token shards:\s+([\d.]+) samples/s per worker", done.stdout).group(1))
    frames = float(re.search(r"frozen encoders:\s+([\d.]+) samples/s per worker", done.stdout).group(1))
    ratio = float(re.search(r"speed-up from precomputed tokens: ([\d.]+)x", done.stdout).group(1))
    assert tokens > 0 and frames > 0 and abs(ratio - tokens / frames) <= 0.05 + 0.05 * ratio
