"""Converts the scenes of a source dataset (ScanNet v2, ScanNet++ iPhone, ARKitScenes) into scene folders.

    ray job submit -- python jobs/convert_scenes.py --dataset scannet --source s3://bucket/scannet \\
        --out s3://bucket/vlm3r-data --splits-dir s3://bucket/scannet/Tasks/Benchmark

Also runs as plain ``python jobs/convert_scenes.py ...`` with a local Ray. ``--source`` is the
folder holding the scene folders (ScanNet ``scans/``, ScanNet++ ``data/``, ARKitScenes
``3dod/<fold>/``) or the dataset root above it. Each scene is one Ray task that writes
``<out>/scenes/<dataset>/<scene_id>/video.mp4`` and ``scene.json``. Splits come from the official
lists in ``--splits-dir`` (ScanNet ``scannetv2_*.txt``, ScanNet++ ``nvs_sem_*.txt``, ARKitScenes
``3dod_train_val_splits.csv``), else from the ARKitScenes fold folder, else ``--split``.
``<out>/scenes/<dataset>/manifest.jsonl`` lists the converted scenes (a re-run skips them);
``errors.jsonl`` beside it lists the scenes that failed in the last run, with the reason. Exits 1
when every scene of the run failed (as every job does), else 0.

ARKitScenes: ``--arkitscenes-metadata <3dod>/metadata.csv`` turns each video's frames upright by its
``sky_direction`` (poses, intrinsics and 2D boxes follow); a video missing from that file fails.
Without it the frames stay as recorded.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

from datagen.readers import (
    READERS,
    SourceScene,
    convert_scene_logged,
    errors_uri,
    list_source_scenes,
    manifest_uri,
    official_splits,
    read_manifest,
    scene_split,
)
from datagen.readers.arkitscenes import read_sky_directions
from jobs.common import init_ray, run_tasks
from vlm3r_core import storage
from vlm3r_core.scene import SPLITS

MANIFEST_FLUSH_S = 10.0  # rewrite the manifest at most this often while scenes complete


@dataclass(frozen=True)
class ConvertScenesConfig:
    dataset: str
    source: str
    out: str
    splits_dir: str | None = None
    split: str | None = None  # for scenes without an official or folder split
    frame_stride: int = 1
    limit: int | None = None
    num_cpus_per_scene: float = 0.5
    address: str | None = None
    arkitscenes_metadata: str | None = None  # metadata.csv: sky_direction turns frames upright

    def __post_init__(self):
        if self.dataset not in READERS:
            raise ValueError(f"dataset must be one of {sorted(READERS)}, got {self.dataset!r}")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if not self.num_cpus_per_scene > 0:
            raise ValueError(f"num_cpus_per_scene must be > 0, got {self.num_cpus_per_scene}")
        if self.arkitscenes_metadata is not None and self.dataset != "arkitscenes":
            raise ValueError(f"arkitscenes_metadata applies to --dataset arkitscenes, not {self.dataset!r}")


def parse_args(argv: list[str] | None = None) -> ConvertScenesConfig:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--dataset", required=True, choices=sorted(READERS))
    p.add_argument("--source", required=True, help="URI of the folder holding the source scene folders")
    p.add_argument("--out", required=True, help="output root URI (writes <out>/scenes/<dataset>/...)")
    p.add_argument("--splits-dir", help="folder URI with the official split files")
    p.add_argument("--split", choices=SPLITS, help="split of scenes with no official or folder split")
    p.add_argument("--frame-stride", type=int, default=1, help="keep every k-th source frame")
    p.add_argument("--limit", type=int, help="convert at most this many scenes (the first by id)")
    p.add_argument("--num-cpus-per-scene", type=float, default=0.5)
    p.add_argument("--address", help="Ray address (default: RAY_ADDRESS or a local Ray)")
    p.add_argument(
        "--arkitscenes-metadata",
        help="URI of ARKitScenes metadata.csv: turn each video's frames upright by its sky_direction",
    )
    a = p.parse_args(argv)
    return ConvertScenesConfig(
        a.dataset,
        a.source,
        a.out,
        a.splits_dir,
        a.split,
        a.frame_stride,
        a.limit,
        a.num_cpus_per_scene,
        a.address,
        a.arkitscenes_metadata,
    )


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    sources = list_source_scenes(cfg.dataset, cfg.source)[: cfg.limit]
    if not sources:
        print(f"convert_scenes: no {cfg.dataset} scenes under {cfg.source}", file=sys.stderr)
        return 1
    official = official_splits(cfg.dataset, cfg.splits_dir) if cfg.splits_dir else None
    skies = read_sky_directions(cfg.arkitscenes_metadata) if cfg.arkitscenes_metadata else None
    manifest = read_manifest(cfg.out, cfg.dataset)
    done_before = sum(1 for s in sources if s.scene_id in manifest)
    errors, todo = [], []
    for source in sources:
        if source.scene_id in manifest:
            continue
        try:
            todo.append(
                (source, scene_split(source, official, cfg.split), _sky_direction(cfg, skies, source))
            )
        except ValueError as e:
            errors.append({"scene_id": source.scene_id, "source": source.uri, "error": f"ValueError: {e}"})

    converted = dropped = 0
    flushed = time.monotonic()
    for row in _convert_all(cfg, todo):
        if "error" in row:
            errors.append(row)
            continue
        manifest[row["scene_id"]] = row
        converted, dropped = converted + 1, dropped + row["frames_dropped"]
        if time.monotonic() - flushed > MANIFEST_FLUSH_S:
            storage.write_jsonl(manifest_uri(cfg.out, cfg.dataset), manifest.values())
            flushed = time.monotonic()
    storage.write_jsonl(manifest_uri(cfg.out, cfg.dataset), [manifest[k] for k in sorted(manifest)])
    storage.write_jsonl(errors_uri(cfg.out, cfg.dataset), sorted(errors, key=lambda r: r["scene_id"]))
    print(
        f"convert_scenes: {converted} {cfg.dataset} scenes converted ({done_before} already done, {len(errors)} failed, "
        f"{dropped} frames dropped) -> {storage.join(cfg.out, 'scenes', cfg.dataset)}"
    )
    return 1 if errors and not converted else 0  # exit 1 only when every scene failed


def _sky_direction(cfg: ConvertScenesConfig, skies: dict[str, str] | None, source: SourceScene) -> str | None:
    """The video's ``sky_direction`` from ``--arkitscenes-metadata`` (``None`` without it)."""
    if skies is None:
        return None
    if source.scene_id not in skies:
        raise ValueError(f"scene {source.scene_id!r} is not in {cfg.arkitscenes_metadata}")
    return skies[source.scene_id]


def _convert_all(cfg: ConvertScenesConfig, todo: list) -> Iterator[dict]:
    """One Ray task per scene; yields manifest or error rows as the tasks finish."""
    if not todo:
        return
    init_ray(cfg.address)
    calls = [
        (source, (cfg.dataset, source, cfg.out, split, cfg.frame_stride, sky)) for source, split, sky in todo
    ]
    for source, row, error in run_tasks(
        convert_scene_logged, calls, cfg.num_cpus_per_scene, f"convert {cfg.dataset}"
    ):
        yield row if error is None else {"scene_id": source.scene_id, "source": source.uri, "error": error}


if __name__ == "__main__":
    sys.exit(main())
