"""Smoke test of benchmarks/bench_cut3r.py at minimal size: both variants run in fresh processes and the
ratios come from their figures."""

from __future__ import annotations

import re

from benchmarks import bench_cut3r


def test_bench_cut3r_runs_both_variants(capsys):
    argv = ["--presets", "tiny", "--videos", "1", "--frames", "1", "--height", "32", "--width", "32",
            "--repeats", "1", "--threads", "1"]  # fmt: skip
    assert bench_cut3r.main(argv) == 0
    out = capsys.readouterr().out
    fps = dict(re.findall(r"(baseline|ours):\s+([\d.]+) frames/s", out))
    ratio = float(re.search(r"ratio ours/baseline: ([\d.]+)x frames/s", out).group(1))
    assert set(fps) == {"baseline", "ours"} and abs(ratio - float(fps["ours"]) / float(fps["baseline"])) <= 0.01 + 0.01 * ratio
    assert re.search(r"token shard per video \(T=32, N=\d+, C=\d+, fp16\)", out)
