"""jobs/generate_qa.py end to end on local Ray: local folders and moto's S3, failures, resume, determinism,
sharded output read by training, evaluation and Hugging Face ``datasets``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from datagen.dataset import write_outputs
from datagen.qa import DatasetConfig, process_scene
from datagen.synthetic.world import SyntheticConfig, write_synthetic_scene
from jobs.generate_qa import main, parse_args
from tests.datagen.scene_builder import random_scene, write_scene_with_video
from vlm3r_core import storage
from vlm3r_core.evaluation import read_benchmark
from vlm3r_core.scene import list_scenes
from vlm3r_core.train_data import read_training_examples


def _write_synthetic_scenes(root: str) -> None:
    """Three scenes of the synthetic world (tiny video) and one broken scene."""
    cfg = SyntheticConfig(width=64, height=48, duration_s=4)
    for i, split in enumerate(["train", "train", "val"]):
        write_synthetic_scene(root, f"syn-{i}", seed=i, cfg=cfg, split=split)
    broken = storage.join(root, "scenes", "synthetic", "syn-broken")
    storage.write_json(storage.join(broken, "scene.json"), {"scene_id": "syn-broken", "dataset": "synthetic"})


def _outputs(out: str) -> dict[str, bytes]:
    """Every file of the data set (shards, manifest, card), by path under ``qa/``."""
    qa = storage.join(out, "qa")
    files = [f for kind in ("benchmark", "conversations") for f in storage.list_files(storage.join(qa, kind))]
    files += [storage.join(qa, "manifest.json"), storage.join(qa, "README.md")]
    return {f[len(qa) + 1 :]: storage.read_bytes(f) for f in files}


def _rows(out: str, kind: str, split: str) -> list[dict]:
    return storage.read_parquet(f"{out}/qa/{kind}/{split}").to_pylist()


def test_local_run_records_failures_resumes_and_is_identical_for_any_worker_count(
    ray_local, tmp_path, capsys
):
    root = str(tmp_path / "data")
    _write_synthetic_scenes(root)
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    common = ["--scenes", root, "--per-scene-cap", "3", "route_planning=1", "--seed", "5", "--scenes-per-shard", "2"]
    assert main([*common, "--out", two, "--concurrency", "2", "--num-cpus-per-scene", "0.25"]) == 0
    # One worker: the same library calls in this process, one scene after the other.
    config = parse_args([*common, "--out", one]).qa
    scenes = list_scenes(root)
    results = [process_scene(s, one, config) for s in scenes]
    write_outputs(one, config, scenes, [r for r in results if r.error], DatasetConfig(scenes_per_shard=2))
    assert _outputs(one) == _outputs(two)
    # Two groups of two scenes (syn-0, syn-1 | syn-2); a group writes one file per split it has.
    assert sorted(p for p in _outputs(one) if p.endswith(".parquet")) == [
        "benchmark/train/part-00000.parquet",
        "benchmark/val/part-00001.parquet",
        "conversations/train/part-00000.parquet",
        "conversations/val/part-00001.parquet",
    ]

    manifest = storage.read_json(f"{one}/qa/manifest.json")
    assert (
        manifest["num_scenes"] == 4
        and manifest["num_failed"] == 1
        and manifest["caps"]["route_planning"] == 1
    )
    assert (
        set(manifest["counts"]) == {"train", "val"} and manifest["counts"]["val"]["room_size_estimation"] == 1
    )
    assert manifest["num_shards"] == 4 and sum(s["rows"] for s in manifest["shards"]) == 2 * manifest["num_rows"]
    errors = storage.read_jsonl(f"{two}/qa/errors.jsonl")  # the job's ledger
    assert (
        len(errors) == 1
        and errors[0]["scene"].endswith("syn-broken")
        and "SceneValidationError" in errors[0]["error"]
    )
    rows = _rows(one, "benchmark", "train")
    assert {r["scene_name"] for r in rows} == {"syn-0", "syn-1"} and all(r["seed"] == 5 for r in rows)
    assert all(r["video"].endswith(f"scenes/synthetic/{r['scene_name']}/video.mp4") for r in rows)
    table = storage.read_parquet(f"{one}/qa/benchmark/train/part-00000.parquet")
    assert table.column_names[:7] == [
        "id",
        "dataset",
        "scene_name",
        "question_type",
        "question",
        "options",
        "ground_truth",
    ]
    assert table.num_rows == len(rows)

    # Training and evaluation read the split folders as they are.
    examples = read_training_examples(f"{one}/qa/conversations/train")
    assert [e.id for e in examples] == [r["id"] for r in rows]
    assert {e.video_id for e in examples} == {"synthetic/syn-0", "synthetic/syn-1"}
    assert len(read_training_examples(f"{one}/qa/conversations")) == manifest["num_rows"]
    assert [r.id for r in read_benchmark(f"{one}/qa/benchmark/val")] == [r["id"] for r in _rows(one, "benchmark", "val")]

    # Re-running resumes: the three good scenes come from the cache, the broken one is retried.
    capsys.readouterr()
    caches = storage.list_files(f"{one}/qa/_per_scene", ".parquet")
    stamps = [(tmp_path / c).stat().st_mtime_ns for c in caches]
    assert main([*common, "--out", one, "--concurrency", "1"]) == 0
    assert "[generate_qa] 0 done, 3 already done, 1 failed of 4" in capsys.readouterr().out
    assert [(tmp_path / c).stat().st_mtime_ns for c in caches] == stamps
    assert _outputs(one) == _outputs(two)


def test_runs_against_s3(ray_local, moto_s3):
    root = f"{moto_s3}/data"
    for i, split in enumerate(["train", "val"]):
        write_scene_with_video(
            random_scene(
                np.random.default_rng(i), num_objects=12, num_frames=64, scene_id=f"toy-{i}", split=split
            ),
            root,
        )
    assert (
        main(
            [
                "--scenes",
                f"{root}/scenes",
                "--out",
                root,
                "--tasks",
                "object_counting",
                "camera_displacement",
                "--per-scene-cap",
                "2",
            ]
        )
        == 0
    )
    rows = _rows(root, "benchmark", "train")
    assert rows and {r["question_type"] for r in rows} <= {"object_counting", "camera_displacement"}
    assert all(r["video"].startswith(f"{root}/scenes/synthetic/") for r in rows)
    conv = _rows(root, "conversations", "val")
    assert conv and conv[0]["conversations"][0]["value"].startswith("<image>\n")
    assert storage.read_json(f"{root}/qa/manifest.json")["tasks"] == [
        "object_counting",
        "camera_displacement",
    ]


def test_arguments_are_checked():
    cfg = parse_args(["--scenes", "s", "--out", "o", "--per-scene-cap", "7", "route_planning=2"])
    assert cfg.qa.cap("route_planning") == 2 and cfg.qa.cap("object_counting") == 7
    with pytest.raises(ValueError, match="--per-scene-cap 'many': expected N or TASK=N"):
        parse_args(["--scenes", "s", "--out", "o", "--per-scene-cap", "many"])
    with pytest.raises(ValueError, match=r"unknown task\(s\) \['nonsense'\]"):
        parse_args(["--scenes", "s", "--out", "o", "--tasks", "nonsense"])
    assert dataclasses.replace(cfg.qa, seed=1).fingerprint() != cfg.qa.fingerprint()
    cfg = parse_args(["--scenes", "s", "--out", "o", "--scenes-per-shard", "64", "--debias", "--debias-tolerance", "0.02"])
    assert (cfg.dataset.scenes_per_shard, cfg.dataset.debias, cfg.dataset.debias_tolerance) == (64, True, 0.02)
    assert not parse_args(["--scenes", "s", "--out", "o"]).dataset.debias
    with pytest.raises(ValueError, match="--scenes-per-shard must be >= 1, got 0"):
        parse_args(["--scenes", "s", "--out", "o", "--scenes-per-shard", "0"])


def test_no_scenes_is_an_error(tmp_path, capsys):
    assert main(["--scenes", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().err == f"[generate_qa] error: FileNotFoundError: no scene.json under {tmp_path}\n"


def test_a_video_shorter_than_its_scene_is_a_recorded_failure(ray_local, tmp_path, capsys):
    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    scene = random_scene(np.random.default_rng(0), num_objects=8, num_frames=40, scene_id="short")
    folder = write_scene_with_video(scene, root)
    write_scene_with_video(random_scene(np.random.default_rng(1), num_objects=8, num_frames=40, scene_id="ok"), root)
    frame = np.zeros((scene.video.height, scene.video.width, 3), np.uint8)
    from vlm3r_core.video import write_video

    write_video(f"{folder}/video.mp4", np.stack([frame] * 5), scene.video.fps)  # 5 frames, scene.json says 40
    assert main(["--scenes", root, "--out", out]) == 0
    (error,) = storage.read_jsonl(f"{out}/qa/errors.jsonl")
    assert error["scene"] == folder and "5 frames, scene.json says 40" in error["error"]
    rows = _rows(out, "benchmark", "train")
    assert rows and {r["scene_name"] for r in rows} == {"ok"}
