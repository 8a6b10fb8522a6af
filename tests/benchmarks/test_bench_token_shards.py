"""Smoke test of benchmarks/bench_token_shards.py at minimal size: both encodings written and read."""

from __future__ import annotations

import re

from benchmarks import bench_token_shards


def test_bench_token_shards_compares_both_encodings(capsys):
    assert bench_token_shards.main(["--videos", "1", "--frames", "2", "--repeats", "2"]) == 0
    out = capsys.readouterr().out
    sizes = [float(v) for v in re.findall(r"([\d.]+) MiB/video  write", out)]
    ratio = float(re.search(r"ratio default/ours: size ([\d.]+)x", out).group(1))
    assert len(sizes) == 2 and abs(ratio - sizes[1] / sizes[0]) <= 0.02 * ratio
    assert "fastest of 2 alternating rounds" in out
