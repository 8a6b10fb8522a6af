"""Smoke test of benchmarks/bench_qa.py at minimal size: the library figures, and the whole job at two
scene counts (each in a fresh process) with throughput, cost and memory figures from real runs."""

from __future__ import annotations

import re

from benchmarks import bench_qa

NUMBER = r"([\d.]+)"


def test_bench_qa_prints_library_and_job_figures(capsys):
    argv = ["--scenes", "1", "--objects", "8", "--frames", "40", "--pairs", "2",
            "--job-scenes", "2", "3", "--job-objects", "6", "--job-frames", "34"]  # fmt: skip
    assert bench_qa.main(argv) == 0
    out = capsys.readouterr().out
    assert re.search(rf"{NUMBER} QA pairs/s, {NUMBER} scenes/s per core", out)
    assert re.search(rf"speed-up {NUMBER}x; grid error max", out)
    rows = re.findall(r"^\s+([23]) \|\s+(\d+) \|\s+(\d+) \|", out, re.MULTILINE)
    assert [r[0] for r in rows] == ["2", "3"] and all(int(q) > 0 and int(s) >= 2 for _, q, s in rows)
    per_core = re.findall(rf"(\d) scenes: {NUMBER} questions/s per core .* job/library ([\d.e-]+); {NUMBER} CPU-hours = \${NUMBER} per million", out)
    assert len(per_core) == 2 and all(float(q) > 0 and 0 < float(ratio) < 2 and float(usd) > 0 for _, q, ratio, _, usd in per_core)
    ratio = re.search(rf"3 / 2 scenes: driver peak {NUMBER}x, largest worker {NUMBER}x, questions {NUMBER}x", out)
    assert ratio and all(float(v) > 0 for v in ratio.groups())
