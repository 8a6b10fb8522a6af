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
    assert raw > 0 and pre > 0
    # the times are printed to 3 decimals (each off by up to 0.0005 s) and the ratio, from the exact
    # times, to 2: the printed figures agree within what that rounding allows
    low, high = (raw - 0.0005) / (pre + 0.0005), (raw + 0.0005) / max(pre - 0.0005, 1e-9)
    assert low - 0.005 <= ratio <= high + 0.005
