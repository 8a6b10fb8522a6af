"""Smoke test of benchmarks/bench_stream.py at minimal size: it runs and prints measured figures."""

from __future__ import annotations

import re

from benchmarks import bench_stream


def test_bench_stream_prints_ratios_from_real_timings(capsys):
    argv = ["--frames", "20", "--keyframes", "4", "--height", "16", "--width", "16", "--repeats", "3",
            "--sessions", "3", "--parallel-rounds", "2", "--answer-tokens", "2"]  # fmt: skip
    assert bench_stream.main(argv) == 0
    out = capsys.readouterr().out
    number = r"([\d.]+)"
    match = re.search(rf"frame 10 {number} ms, frame 19 {number} ms, late/early {number}", out)
    early, late, ratio = map(float, match.groups())
    assert early > 0 and late > 0 and abs(ratio - late / early) <= 0.02 * ratio + 1e-3
    assert re.search(r"in-stream medians of 5: frames 10-14 [\d.]+ ms, frames 15-19 [\d.]+ ms", out)
    assert re.search(r"session bytes \(peak\): first quarter [\d,]+, last quarter [\d,]+, late/early [\d.]+; bound", out)
    assert re.search(r"at the end: [2-4] keyframes, stride \d+, snapshot [\d,]+ bytes", out)
    match = re.search(rf"after frame 10 \(T=4\) {number} ms, after frame 19 \(T=4\) {number} ms, late/early {number}", out)
    early, late, ratio = map(float, match.groups())
    assert early > 0 and late > 0 and abs(ratio - late / early) <= 0.02 * ratio + 1e-3
    match = re.search(rf"3 sessions in parallel on one replica \(median per push of 6, interleaved by round\): "
                      rf"{number} ms against one session {number} ms, 3 sessions/one {number}", out)  # fmt: skip
    many, one, ratio = map(float, match.groups())
    assert many > 0 and one > 0 and abs(ratio - many / one) <= 0.02 * ratio + 1e-3
    match = re.search(r"capacity: ([\d.]+) sessions per CPU core at 2 updates/s; 3 sessions hold ([\d,]+) bytes now, "
                      r"at most ([\d,]+) \(([\d,]+) each\)", out)  # fmt: skip
    held, most, each = (int(g.replace(",", "")) for g in match.groups()[1:])
    assert 0 < held <= most == 3 * each
