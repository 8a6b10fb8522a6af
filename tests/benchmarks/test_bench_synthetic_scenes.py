"""Smoke test of benchmarks/bench_synthetic_scenes.py at minimal size: a scene end to end and both
renderers on the same poses."""

from __future__ import annotations

import re

from benchmarks import bench_synthetic_scenes


def test_bench_synthetic_scenes_renders_with_both(capsys):
    argv = ["--scenes", "1", "--compare-frames", "2", "--width", "64", "--height", "48", "--fps", "4", "--duration-s", "1"]
    assert bench_synthetic_scenes.main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(r"end to end: [\d.]+ s/scene wall, [\d.]+ s/scene CPU", out)
    ours, base, ratio, agree = map(float, re.search(
        r"ours ([\d.]+) frames/s, straightforward open3d baseline ([\d.]+) frames/s, ratio ([\d.]+)x, "
        r"instance masks agree on ([\d.]+)% of pixels", out).groups())  # fmt: skip
    assert ours > 0 and base > 0 and abs(ratio - ours / base) <= 0.01 + 0.01 * ratio and agree == 100.0
