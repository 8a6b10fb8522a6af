"""Smoke test of benchmarks/bench_stream.py at minimal size: it runs and prints measured figures."""

from __future__ import annotations

import re

from benchmarks import bench_stream


def test_bench_stream_prints_ratios_from_real_timings(capsys):
    argv = ["--frames", "20", "--keyframes", "4", "--height", "16", "--width", "16", "--repeats", "3"]
    assert bench_stream.main(argv) == 0
    out = capsys.readouterr().out
    number = r"([\d.]+)"
    match = re.search(rf"frame 10 {number} ms, frame 19 {number} ms, late/early {number}", out)
    early, late, ratio = map(float, match.groups())
    assert early > 0 and late > 0 and abs(ratio - late / early) <= 0.02 * ratio + 1e-3
    assert re.search(r"in-stream medians of 5: frames 10-14 [\d.]+ ms, frames 15-19 [\d.]+ ms", out)
    assert re.search(r"session bytes \(peak\): first quarter [\d,]+, last quarter [\d,]+, late/early [\d.]+; bound", out)
    assert re.search(r"at the end: [2-4] keyframes, stride \d+, snapshot [\d,]+ bytes", out)
