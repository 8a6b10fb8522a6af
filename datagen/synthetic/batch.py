"""A batch of synthetic scenes: ids, seeds, splits, and the manifest / errors files of a run.

Scene ``i`` of a batch with seed ``S`` is ``syn-{i:06d}``; its own seed and its split come from
``(S, i)`` only, so growing ``--num-scenes`` keeps every earlier scene (and its split) unchanged.
Scene ``i`` goes to ``val`` when ``floor((i + 1) * val_fraction) > floor(i * val_fraction)``: every
prefix of a batch holds exactly ``floor(n * val_fraction)`` val scenes, and growing the batch never
moves a scene between splits.

Beside the scene folders, under ``<root>/scenes/synthetic/``:
- ``manifest.jsonl``: one :class:`SceneRecord` per finished scene (sorted by scene id); a re-run
  skips the scenes listed there;
- ``errors.jsonl``: one ``{"scene_id", "seed", "error"}`` line per scene that failed in the last run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from datagen.synthetic.world import DATASET, SyntheticConfig, write_synthetic_scene
from vlm3r_core import storage
from vlm3r_core.scene import scene_dir

MANIFEST_FILE = "manifest.jsonl"
ERRORS_FILE = "errors.jsonl"


@dataclass(frozen=True)
class SceneTask:
    index: int
    scene_id: str
    seed: int
    split: str


@dataclass(frozen=True)
class SceneRecord:
    """One manifest line: a scene that is fully written."""

    scene_id: str
    split: str
    seed: int
    uri: str  # scene folder
    room_type: str
    num_objects: int
    num_frames: int


def plan_scenes(num_scenes: int, seed: int, val_fraction: float) -> list[SceneTask]:
    """The tasks of a batch: ids ``syn-000000``..., per-scene seeds and splits, all from ``(seed, index)``."""
    if num_scenes < 0:
        raise ValueError(f"num_scenes must be >= 0, got {num_scenes}")
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    tasks = []
    for i in range(num_scenes):
        scene_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        split = "val" if math.floor((i + 1) * val_fraction) > math.floor(i * val_fraction) else "train"
        tasks.append(SceneTask(index=i, scene_id=f"syn-{i:06d}", seed=scene_seed, split=split))
    return tasks


def run_scene_task(root: str, task: SceneTask, cfg: SyntheticConfig) -> SceneRecord:
    """Generates and writes one scene; returns its manifest record (raises on failure)."""
    scene = write_synthetic_scene(root, task.scene_id, task.seed, cfg, task.split)
    return SceneRecord(
        scene_id=task.scene_id,
        split=task.split,
        seed=task.seed,
        uri=scene_dir(root, DATASET, task.scene_id),
        room_type=scene.extra["room_type"],
        num_objects=len(scene.objects),
        num_frames=scene.video.num_frames,
    )


def dataset_dir(root: str) -> str:
    """``<root>/scenes/synthetic``: the scene folders, the manifest and the errors file."""
    return storage.join(root, "scenes", DATASET)


def read_manifest(root: str) -> dict[str, SceneRecord]:
    """Finished scenes by id (empty when there is no manifest yet)."""
    uri = storage.join(dataset_dir(root), MANIFEST_FILE)
    if not storage.exists(uri):
        return {}
    return {row["scene_id"]: SceneRecord(**row) for row in storage.read_jsonl(uri)}


def write_manifest(root: str, records: dict[str, SceneRecord]) -> None:
    storage.write_jsonl(storage.join(dataset_dir(root), MANIFEST_FILE), [asdict(records[k]) for k in sorted(records)])


def write_errors(root: str, errors: list[dict]) -> None:
    """Rewrites ``errors.jsonl`` with this run's failures (an empty file when none failed)."""
    storage.write_jsonl(storage.join(dataset_dir(root), ERRORS_FILE), sorted(errors, key=lambda e: e["scene_id"]))
