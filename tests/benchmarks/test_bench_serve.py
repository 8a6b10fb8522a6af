"""Smoke test of benchmarks/bench_serve.py at minimal size (in its own process: it starts its own Ray and
Serve): both setups answer and the ratios come from their figures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_serve_answers_with_both_setups():
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "--requests", "1", "--concurrency", "1",
           "--max-tokens", "2", "--frames", "4", "--num-cpus", "2"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    throughput = dict(re.findall(r"(split|single)\s+concurrency\s+1: .* ([\d.]+) req/s", done.stdout))
    ratio = float(re.search(r"split/single throughput ([\d.]+)x", done.stdout).group(1))
    assert set(throughput) == {"split", "single"}
    assert abs(ratio - float(throughput["split"]) / float(throughput["single"])) <= 0.01 + 0.02 * ratio
