"""Converting source scans into scene folders: the run config, the readers by dataset, source
folders and official splits, and one scene's conversion.

- :func:`read_source_scene` reads one source scene into a :class:`ReadResult` (the validated
  :class:`~vlm3r_core.scene.Scene`, how many frames were dropped and why, and where each video frame's
  pixels come from);
- :func:`convert_scene` writes ``<out_root>/scenes/<dataset>/<scene_id>/`` with ``video.mp4`` (the
  kept frames, in order: frame ``index`` i of the scene is video frame i) and ``scene.json``
  (written last, so a folder with ``scene.json`` is complete), and checks the written video
  against it;
- :func:`list_source_scenes` finds the scenes of a source folder; :func:`official_splits` maps
  scene ids to train/val from the official split files; :func:`plan_conversion` gives every scene
  of a run its split and sky direction (or the reason it has none).

``jobs/convert_scenes.py`` runs :func:`convert_scene_row` as one Ray task per scene and records the
rows in the run ledger (``<out>/scenes/<dataset>/manifest.jsonl`` and ``errors.jsonl``).
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass
from typing import Literal

from datagen.readers import arkitscenes, scannet, scannetpp
from datagen.readers.arkitscenes import read_sky_directions
from datagen.readers.common import ReadResult, SourceFormatError
from datagen.readers.frames import VIDEO_FILE, iter_video_frames
from vlm3r_core import storage
from vlm3r_core.scene import SPLITS, scene_dir, verify_video, write_scene
from vlm3r_core.video import write_video_stream

logger = logging.getLogger("datagen.readers")

READERS = {
    "scannet": scannet.read_scene,
    "scannetpp": scannetpp.read_scene,
    "arkitscenes": arkitscenes.read_scene,
}

# Official split files per dataset: file name -> split.
SPLIT_FILES = {
    "scannet": {"scannetv2_train.txt": "train", "scannetv2_val.txt": "val", "scannetv2_test.txt": "test"},
    "scannetpp": {"nvs_sem_train.txt": "train", "nvs_sem_val.txt": "val"},
    "arkitscenes": {"3dod_train_val_splits.csv": ""},  # columns video_id, visit_id, fold
}
ARKIT_FOLDS = {"Training": "train", "Validation": "val"}


def _check_dataset(dataset: str) -> None:
    if dataset not in READERS:
        raise ValueError(f"unknown dataset {dataset!r}; readers exist for {sorted(READERS)}")


def read_source_scene(
    dataset: str,
    source_dir: str,
    scene_id: str,
    split: str,
    frame_stride: int = 1,
    sky_direction: str | None = None,
) -> ReadResult:
    """Reads one source scene folder into the scene contract.

    Args:
        dataset: ``scannet``, ``scannetpp`` or ``arkitscenes``.
        source_dir: URI of the scene's own folder (``scans/<scene_id>``, ``data/<scene_id>``,
            ``3dod/<fold>/<video_id>``).
        scene_id: the scene's name in its dataset.
        split: ``train``, ``val`` or ``test``.
        frame_stride: keep every k-th source frame (ScanNet++ iPhone video is 60 fps).
        sky_direction: ARKitScenes only: ``metadata.csv``'s ``sky_direction`` of the video, which
            turns its frames upright (``None``: frames as recorded).

    Raises:
        SourceFormatError: a malformed or truncated source file (the message names it).
        FileNotFoundError: a required file is missing.
    """
    _check_dataset(dataset)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if frame_stride < 1:
        raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
    if sky_direction is None:
        result = READERS[dataset](source_dir, scene_id, split, frame_stride)
    elif dataset == "arkitscenes":
        result = arkitscenes.read_scene(source_dir, scene_id, split, frame_stride, sky_direction)
    else:
        raise ValueError(f"sky_direction applies to arkitscenes only, not {dataset!r}")
    logger.info(
        "%s/%s: %d frames (%d dropped), %d objects", dataset, scene_id, len(result.scene.frames),
        result.frames_dropped, len(result.scene.objects),
    )  # fmt: skip
    return result


@dataclass(frozen=True)
class ConvertedScene:
    uri: str  # the scene folder
    scene_id: str
    num_frames: int
    frames_dropped: int
    drop_reasons: dict[str, int]
    num_objects: int


def convert_scene(
    dataset: str,
    source_uri: str,
    out_root: str,
    scene_id: str,
    split: str,
    frame_stride: int = 1,
    sky_direction: str | None = None,
) -> ConvertedScene:
    """Reads a source scene and writes its folder under ``<out_root>/scenes/<dataset>/<scene_id>/``.

    The kept frames are encoded one at a time into ``video.mp4`` (H.264), then ``scene.json`` is
    written; returns what was written.
    """
    result = read_source_scene(dataset, source_uri, scene_id, split, frame_stride, sky_direction)
    folder = scene_dir(out_root, dataset, scene_id)
    written = write_video_stream(
        storage.join(folder, VIDEO_FILE), iter_video_frames(result), result.scene.video.fps
    )
    if written != result.scene.video.num_frames:
        raise SourceFormatError(
            source_uri, f"encoded {written} frames, the scene has {result.scene.video.num_frames}"
        )
    write_scene(result.scene, out_root)
    verify_video(result.scene, folder)
    return ConvertedScene(
        uri=folder,
        scene_id=scene_id,
        num_frames=result.scene.video.num_frames,
        frames_dropped=result.frames_dropped,
        drop_reasons=result.drop_reasons,
        num_objects=len(result.scene.objects),
    )


# ----------------------------------------------------------------------------------------------
# Source folders and official splits
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceScene:
    scene_id: str
    uri: str  # the scene's source folder
    fold_split: str | None = None  # split implied by the folder (ARKitScenes Training/Validation)


def _marker(dataset: str, scene_id: str) -> list[str]:
    """Files (relative to a scene folder) of which one marks a folder as a scene of ``dataset``."""
    return {
        "scannet": [f"{scene_id}.aggregation.json", f"{scene_id}_vh_clean.aggregation.json"],
        "scannetpp": ["scans/segments_anno.json"],
        "arkitscenes": [f"{scene_id}_3dod_annotation.json"],
    }[dataset]


def _subfolders(uri: str) -> list[str]:
    fs, path = storage.filesystem(uri)
    if not fs.exists(path):
        raise FileNotFoundError(f"{uri}: no such folder")
    names = [
        p["name"].rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=True) if p["type"] == "directory"
    ]
    return sorted(names)


def list_source_scenes(dataset: str, source_root: str) -> list[SourceScene]:
    """The scenes under a source folder, sorted by id.

    ``source_root`` is the folder holding the scene folders (ScanNet ``scans/``, ScanNet++
    ``data/``, ARKitScenes ``3dod/<fold>/``) or its parent (the dataset root, or ARKitScenes ``3dod/``
    with ``Training/`` and ``Validation/``). A folder is a scene when it holds the dataset's
    annotation file.
    """
    _check_dataset(dataset)
    roots = [source_root.rstrip("/")]
    for sub in {"scannet": ["scans"], "scannetpp": ["data"], "arkitscenes": list(ARKIT_FOLDS)}[dataset]:
        if storage.exists(storage.join(source_root, sub)):
            roots.append(storage.join(source_root, sub))
    found: dict[str, SourceScene] = {}
    for root in roots:
        fold = ARKIT_FOLDS.get(root.rsplit("/", 1)[-1]) if dataset == "arkitscenes" else None
        for name in _subfolders(root):
            folder = storage.join(root, name)
            if any(storage.exists(storage.join(folder, m)) for m in _marker(dataset, name)):
                found.setdefault(name, SourceScene(name, folder, fold))
    return [found[k] for k in sorted(found)]


def scene_split(source: SourceScene, official: dict[str, str] | None, default: str | None) -> str:
    """A scene's split: from the official lists when given (a scene missing there is an error),
    else from its folder (ARKitScenes ``Training``/``Validation``), else ``default``."""
    if official is not None:
        if source.scene_id not in official:
            raise ValueError(f"scene {source.scene_id!r} is in none of the official split lists")
        return official[source.scene_id]
    split = source.fold_split or default
    if split is None:
        raise ValueError(
            f"scene {source.scene_id!r}: no split (give official split files or a default split)"
        )
    return split


def official_splits(dataset: str, splits_dir: str) -> dict[str, str]:
    """``{scene_id: split}`` from the official split files found in ``splits_dir``.

    ScanNet: ``scannetv2_{train,val,test}.txt``; ScanNet++: ``nvs_sem_{train,val}.txt``;
    ARKitScenes: ``3dod_train_val_splits.csv`` (``fold`` Training/Validation). A scene listed in two
    splits is an error.
    """
    _check_dataset(dataset)
    splits: dict[str, str] = {}
    found = []
    for name, split in SPLIT_FILES[dataset].items():
        uri = storage.join(splits_dir, name)
        if not storage.exists(uri):
            continue
        found.append(name)
        if name.endswith(".csv"):
            rows = csv.DictReader(io.StringIO(storage.read_text(uri)))
            if not rows.fieldnames or not {"video_id", "fold"} <= set(rows.fieldnames):
                raise SourceFormatError(uri, f"needs columns video_id and fold, has {rows.fieldnames}")
            pairs = []
            for n, row in enumerate(rows, start=2):
                if row["fold"] not in ARKIT_FOLDS:
                    raise SourceFormatError(
                        uri, f"line {n}: fold must be one of {list(ARKIT_FOLDS)}, got {row['fold']!r}"
                    )
                pairs.append((row["video_id"], ARKIT_FOLDS[row["fold"]]))
        else:
            pairs = [(line.strip(), split) for line in storage.read_text(uri).splitlines() if line.strip()]
        for scene_id, scene_split in pairs:
            if splits.get(scene_id, scene_split) != scene_split:
                raise SourceFormatError(
                    uri, f"scene {scene_id!r} is in both {splits[scene_id]} and {scene_split}"
                )
            splits[scene_id] = scene_split
    if not found:
        raise FileNotFoundError(
            f"{splits_dir}: none of the official split files {sorted(SPLIT_FILES[dataset])}"
        )
    return splits


# ----------------------------------------------------------------------------------------------
# A conversion run
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvertScenesConfig:
    """Which source scenes to convert, and how.

    Args:
        dataset: the source dataset.
        source: URI of the folder holding the source scene folders (ScanNet ``scans/``, ScanNet++
            ``data/``, ARKitScenes ``3dod/<fold>/``) or the dataset root above it.
        out: output root URI (writes ``<out>/scenes/<dataset>/...``).
        splits_dir: folder URI with the official split files.
        split: split of scenes with no official or folder split.
        frame_stride: keep every k-th source frame (ScanNet++ iPhone video is 60 fps).
        limit: convert at most this many scenes (the first by id).
        num_cpus_per_scene: CPUs of each scene's Ray task.
        arkitscenes_metadata: URI of ARKitScenes ``metadata.csv``: turn each video's frames upright
            by its ``sky_direction``.
    """

    dataset: Literal["scannet", "scannetpp", "arkitscenes"]
    source: str
    out: str
    splits_dir: str | None = None
    split: Literal["train", "val", "test"] | None = None
    frame_stride: int = 1
    limit: int | None = None
    num_cpus_per_scene: float = 0.5
    arkitscenes_metadata: str | None = None

    def __post_init__(self):
        _check_dataset(self.dataset)
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

    @property
    def dataset_dir(self) -> str:
        """``<out>/scenes/<dataset>``: the scene folders and the run's ledger."""
        return storage.join(self.out, "scenes", self.dataset)


@dataclass(frozen=True)
class ConversionPlan:
    """Every source scene of a run: what to convert with its split and sky direction, and the
    scenes that cannot be converted with the reason (no split, not in the metadata file)."""

    sources: dict[str, SourceScene]
    todo: dict[str, tuple[str, str | None]]  # scene_id -> (split, sky_direction)
    refused: dict[str, str]  # scene_id -> reason


def plan_conversion(cfg: ConvertScenesConfig) -> ConversionPlan:
    """Lists the source scenes (at most ``limit``) and gives each its split and sky direction.

    Raises:
        FileNotFoundError: no source folder, or no scene in it.
    """
    sources = list_source_scenes(cfg.dataset, cfg.source)[: cfg.limit]
    if not sources:
        raise FileNotFoundError(f"no {cfg.dataset} scenes under {cfg.source}")
    official = official_splits(cfg.dataset, cfg.splits_dir) if cfg.splits_dir else None
    skies = read_sky_directions(cfg.arkitscenes_metadata) if cfg.arkitscenes_metadata else None
    todo, refused = {}, {}
    for source in sources:
        try:
            split = scene_split(source, official, cfg.split)
            if skies is not None and source.scene_id not in skies:
                raise ValueError(f"scene {source.scene_id!r} is not in {cfg.arkitscenes_metadata}")
            todo[source.scene_id] = (split, None if skies is None else skies[source.scene_id])
        except ValueError as e:
            refused[source.scene_id] = f"ValueError: {e}"
    return ConversionPlan({s.scene_id: s for s in sources}, todo, refused)


def convert_scene_row(
    dataset: str, source: SourceScene, out_root: str, split: str, frame_stride: int, sky_direction: str | None
) -> dict:
    """Converts one scene (one Ray task of ``jobs/convert_scenes.py``) and returns its manifest row;
    raises on failure (the job records the reason)."""
    start = time.monotonic()
    done = convert_scene(dataset, source.uri, out_root, source.scene_id, split, frame_stride, sky_direction)
    return {
        "scene_id": done.scene_id,
        "uri": done.uri,
        "split": split,
        "num_frames": done.num_frames,
        "frames_dropped": done.frames_dropped,
        "drop_reasons": done.drop_reasons,
        "num_objects": done.num_objects,
        "seconds": round(time.monotonic() - start, 2),
    }
