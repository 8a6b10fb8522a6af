"""QA generation speed on synthetic-like scenes, on one core, against the reference's distance in the same run.

    python benchmarks/bench_qa.py [--scenes 5] [--objects 30] [--frames 300] [--pairs 40]

Prints, for scenes of ``--objects`` boxes and ``--frames`` posed frames (built with
:func:`tests.datagen.scene_builder.random_scene`):

1. QA pairs per second and scenes per second per core for all 13 tasks (every question type),
   and whether the target holds: a 30-object scene yields all task types in under 2 s on one core;
2. the closest-point distance of ``--pairs`` random object pairs, exact
   (:func:`datagen.scene_graph.obb_distance`) against the reference's way (5 cm point grid of each
   box, interior quarter removed, brute-force ``cdist``), as a speed ratio and the grid method's
   largest error.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections import Counter
from itertools import combinations

import numpy as np
from scipy.spatial.distance import cdist

from datagen.qa import QAConfig, generate_scene_rows
from datagen.scene_graph import obb_distance
from datagen.tasks import TASKS
from tests.datagen.scene_builder import random_scene


def reference_box_points(
    center: np.ndarray, extent: np.ndarray, rotation: np.ndarray, spacing: float = 0.05
) -> np.ndarray:
    """The reference's sample of a box: ceil(e / 5 cm) grid points per axis over the full extent,
    keeping the points with some |coordinate| > e / 4 (a thick shell); half spacing if none."""
    while True:
        axes = [np.linspace(-e / 2, e / 2, max(2, math.ceil(e / spacing))) for e in extent]
        grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)  # (N, 3) box coordinates
        shell = grid[np.any(np.abs(grid) > extent / 4, axis=1)]
        if len(shell):
            return center + shell @ rotation.T
        spacing /= 2


def reference_distance(a, b) -> float:
    return float(
        cdist(
            reference_box_points(a.center, a.extent, a.rotation),
            reference_box_points(b.center, b.extent, b.rotation),
        ).min()
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--scenes", type=int, default=5)
    p.add_argument("--objects", type=int, default=30)
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--pairs", type=int, default=40, help="object pairs timed with both distance methods")
    args = p.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, BLAS threads included

    scenes = [
        random_scene(np.random.default_rng(s), args.objects, args.frames, scene_id=f"bench-{s}")
        for s in range(args.scenes)
    ]
    generate_scene_rows(scenes[0], "v.mp4", QAConfig())  # warm-up (imports, caches)

    per_scene, types = [], Counter()
    rows_total = 0
    for scene in scenes:
        start = time.perf_counter()
        rows = generate_scene_rows(scene, "v.mp4", QAConfig())
        per_scene.append(time.perf_counter() - start)
        rows_total += len(rows)
        types.update({r["question_type"] for r in rows})
    total = sum(per_scene)
    all_types = {qt for name in QAConfig().tasks for qt in TASKS[name].question_types}
    print(f"QA generation, {args.scenes} scenes x {args.objects} objects x {args.frames} frames, 1 core:")
    print(f"  {rows_total / total:.0f} QA pairs/s, {args.scenes / total:.2f} scenes/s per core")
    print(f"  per scene: mean {np.mean(per_scene):.3f} s, max {max(per_scene):.3f} s")
    print(
        f"  question types produced in every scene: {sum(n == args.scenes for n in types.values())}/{len(all_types)}"
    )
    every = all(types[qt] == args.scenes for qt in all_types)
    print(
        f"  target 'all task types in < 2 s per scene': {'met' if every and max(per_scene) < 2 else 'NOT met'}"
    )

    objects = scenes[0].objects
    every_pair = list(combinations(objects, 2))
    pairs = [every_pair[i] for i in np.random.default_rng(0).permutation(len(every_pair))[: args.pairs]]
    start = time.perf_counter()
    exact = [obb_distance(a.center, a.extent, a.rotation, b.center, b.extent, b.rotation) for a, b in pairs]
    t_exact = time.perf_counter() - start
    start = time.perf_counter()
    grid = [reference_distance(a, b) for a, b in pairs]
    t_grid = time.perf_counter() - start
    error = np.abs(np.array(grid) - np.array(exact))
    print(f"closest-point distance, {len(pairs)} random object pairs of one scene:")
    print(
        f"  exact OBB distance {t_exact / len(pairs) * 1e3:.2f} ms/pair; reference 5 cm grid + cdist {t_grid / len(pairs) * 1e3:.1f} ms/pair"
    )
    print(
        f"  speed-up {t_grid / t_exact:.1f}x; grid error max {error.max() * 100:.1f} cm, mean {error.mean() * 100:.1f} cm"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
