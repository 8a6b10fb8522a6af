"""Smoke test of benchmarks/bench_route_yield.py at minimal size: both kinds of room, both tasks."""

from __future__ import annotations

import re

from benchmarks import bench_route_yield


def test_bench_route_yield_counts_routes(capsys):
    assert bench_route_yield.main(["--synthetic", "1", "--random", "1"]) == 0
    out = capsys.readouterr().out
    counts = re.findall(r"(capped|uncapped)\s+route_planning\s+([\d.]+)/room, route_planning_one_turn ([\d.]+)/room, all ([\d.]+)/room", out)
    assert len(counts) == 4
    assert all(float(a) == float(b) + float(c) for _, b, c, a in counts)  # all = both tasks
    assert out.count("rooms with a route question") == 2
