"""Route questions per scene: the benchmark task alone against it plus the one-turn family, same scenes.

    python benchmarks/bench_route_yield.py [--synthetic 20] [--random 8]

Scenes: ``--synthetic`` rooms of the synthetic world (:func:`datagen.synthetic.generate_scene`, seeds
0, 1, ..., rendered at 32 x 24 px since only the layout matters) and ``--random`` boxes rooms
(:func:`tests.datagen.scene_builder.random_scene`, 30 objects, seeds 100, 101, ...), planned with the
built-in planner. For each kind it prints route questions per scene for ``route_planning`` (the
baseline: VSI-Bench's 2-4 fill-in routes, default cap 5) and ``route_planning_one_turn`` (extended
set, default cap 10), at the default caps and uncapped, the rooms with at least one route question,
and the ratio of all route questions (task set ``"all"``) to the baseline.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from datagen.scene_graph import SceneGraph
from datagen.synthetic import SyntheticConfig, generate_scene
from datagen.tasks import route_planning, route_planning_one_turn
from tests.datagen.scene_builder import random_scene

UNCAPPED = 10**6


def count_routes(scene, seed: int) -> dict[str, int]:
    """Route questions of one scene per (task, capped / uncapped)."""
    graph = SceneGraph(scene)
    out = {}
    for name, module in (("official", route_planning), ("one_turn", route_planning_one_turn)):
        for cap_name, cap in (("capped", module.DEFAULT_CAP), ("uncapped", UNCAPPED)):
            items = module.generate(graph, np.random.default_rng(seed), cap, planner="builtin")
            out[f"{name}/{cap_name}"] = len(items)
    return out


def report(kind: str, counts: list[dict[str, int]]) -> None:
    def mean(key: str) -> float:
        return float(np.mean([c[key] for c in counts]))

    def rooms(*keys: str) -> int:
        return sum(any(c[k] for k in keys) for c in counts)

    print(f"{kind}: {len(counts)} rooms")
    for cap in ("capped", "uncapped"):
        base, extra = mean(f"official/{cap}"), mean(f"one_turn/{cap}")
        ratio = f"{(base + extra) / base:.1f}x" if base else "inf (baseline 0)"
        print(
            f"  {cap:8s} route_planning {base:5.2f}/room, route_planning_one_turn {extra:5.2f}/room, "
            f"all {base + extra:5.2f}/room ({ratio})"
        )
    print(
        f"  rooms with a route question: route_planning {rooms('official/uncapped')}/{len(counts)}, "
        f"all {rooms('official/uncapped', 'one_turn/uncapped')}/{len(counts)}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--synthetic", type=int, default=20, help="synthetic rooms (seeds 0, 1, ...)")
    p.add_argument("--random", type=int, default=8, help="random box rooms (seeds 100, 101, ...)")
    args = p.parse_args(argv)
    start = time.perf_counter()
    tiny = SyntheticConfig(width=32, height=24, duration_s=3.2)
    synthetic = [count_routes(generate_scene(f"s{s}", s, tiny)[0], s) for s in range(args.synthetic)]
    boxes = [
        count_routes(random_scene(np.random.default_rng(100 + s), 30, 64, scene_id=f"r{s}"), s)
        for s in range(args.random)
    ]
    report("synthetic rooms", synthetic)
    report("random box rooms", boxes)
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
