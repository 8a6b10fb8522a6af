"""Smoke test of benchmarks/bench_vlm_step.py at minimal size: both paths step, alternating."""

from __future__ import annotations

import re

from benchmarks import bench_vlm_step


def test_bench_vlm_step_times_both_paths(capsys):
    assert bench_vlm_step.main(["--frames", "2", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    raw = float(re.search(r"raw frames:\s+([\d.]+) s/step", out).group(1))
    pre = float(re.search(r"precomputed tokens:\s+([\d.]+) s/step", out).group(1))
    ratio = float(re.search(r"speedup = raw / precomputed = ([\d.]+)x", out).group(1))
    assert raw > 0 and pre > 0 and abs(ratio - raw / pre) <= 0.01 + 0.01 * ratio
