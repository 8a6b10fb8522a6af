"""A batch of synthetic scenes: the run config, ids, seeds and splits, and one scene's task.

Scene ``i`` of a batch with seed ``S`` is ``syn-{i:06d}``; its own seed and its split come from
``(S, i)`` only, so growing ``--num-scenes`` keeps every earlier scene (and its split) unchanged.
Scene ``i`` goes to ``val`` when ``floor((i + 1) * val_fraction) > floor(i * val_fraction)``: every
prefix of a batch holds exactly ``floor(n * val_fraction)`` val scenes, and growing the batch never
moves a scene between splits.

The run's ledger (:class:`vlm3r_core.ledger.RunLedger`) lives beside the scene folders, under
``<root>/scenes/synthetic/``: ``manifest.jsonl`` holds one :class:`SceneRecord` per finished scene
(a re-run skips them), ``errors.jsonl`` one ``{"scene_id", "error", "seed"}`` row per scene that
failed in the last run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from datagen.synthetic.world import DATASET, SyntheticConfig, write_synthetic_scene
from vlm3r_core import storage
from vlm3r_core.scene import scene_dir, verify_video


@dataclass(frozen=True)
class MakeScenesConfig:
    """A batch of synthetic scenes to write.

    Args:
        num_scenes: scenes in the batch (``syn-000000`` ...); a larger batch keeps the earlier scenes.
        out: output root URI (writes ``<out>/scenes/synthetic/...``).
        seed: batch seed; scene ``i`` depends only on ``(seed, i)``.
        val_fraction: fraction of scenes in the val split (every k-th scene, stable as the batch grows).
        num_cpus_per_scene: CPUs of each scene's Ray task (fractions allowed).
        scene: how each scene is rendered.
    """

    num_scenes: int
    out: str
    seed: int = 0
    val_fraction: float = 0.1
    num_cpus_per_scene: float = 1.0
    scene: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        if self.num_scenes < 1:
            raise ValueError(f"num_scenes must be >= 1, got {self.num_scenes}")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise ValueError(f"val_fraction must be in [0, 1], got {self.val_fraction}")
        if not self.num_cpus_per_scene > 0:
            raise ValueError(f"num_cpus_per_scene must be > 0, got {self.num_cpus_per_scene}")


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
    """Generates and writes one scene, checks the written video against its ``scene.json`` and
    returns its manifest record (raises on failure)."""
    scene = write_synthetic_scene(root, task.scene_id, task.seed, cfg, task.split)
    verify_video(scene, scene_dir(root, DATASET, task.scene_id))
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
