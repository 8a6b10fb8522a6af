"""jobs/make_scenes.py on the shared local Ray: manifest, resume, per-scene errors, S3 output."""

import os

import pytest

from datagen.synthetic.batch import plan_scenes
from jobs.make_scenes import main, parse_args
from vlm3r_core import storage
from vlm3r_core.scene import list_scenes, read_scene
from vlm3r_core.video import read_video

SMALL = ["--width", "160", "--height", "120", "--fps", "5", "--duration-s", "2", "--num-cpus-per-scene", "0.5"]


def _check_scene(folder: str, split: str):
    scene = read_scene(folder)
    assert scene.dataset == "synthetic" and scene.split == split and len(scene.objects) >= 1
    decoded = read_video(scene.video_uri(folder), num_samples=4)
    assert decoded.num_frames == scene.video.num_frames == len(scene.frames) == 10


def test_plan_is_deterministic_and_stable_when_growing():
    small, big = plan_scenes(5, seed=3, val_fraction=0.5), plan_scenes(50, seed=3, val_fraction=0.5)
    assert big[:5] == small == plan_scenes(5, seed=3, val_fraction=0.5)
    assert [t.scene_id for t in small] == [f"syn-{i:06d}" for i in range(5)]
    assert {t.split for t in big} == {"train", "val"}
    assert len({t.seed for t in big}) == 50 and plan_scenes(5, seed=4, val_fraction=0.5) != small
    assert {t.split for t in plan_scenes(20, 0, 0.0)} == {"train"} and {t.split for t in plan_scenes(20, 0, 1.0)} == {"val"}


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="even"):
        parse_args(["--num-scenes", "1", "--out", "x", "--width", "161"])
    with pytest.raises(ValueError, match="--val-fraction"):
        parse_args(["--num-scenes", "1", "--out", "x", "--val-fraction", "1.5"])


def test_writes_scenes_records_failures_and_resumes(ray_local, tmp_path, capsys):
    out = str(tmp_path)
    # A file where scene syn-000001's folder should go: that scene fails, the others are written.
    blocker = tmp_path / "scenes" / "synthetic" / "syn-000001"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("not a folder")
    args = ["--num-scenes", "3", "--out", out, "--seed", "5", "--val-fraction", "0.5", *SMALL]

    assert main(args) == 0  # one scene failed, the run completed
    base = storage.join(out, "scenes", "synthetic")
    manifest = storage.read_jsonl(storage.join(base, "manifest.jsonl"))
    assert [r["scene_id"] for r in manifest] == ["syn-000000", "syn-000002"]
    errors = storage.read_jsonl(storage.join(base, "errors.jsonl"))
    assert [e["scene_id"] for e in errors] == ["syn-000001"]
    assert "syn-000001" in errors[0]["error"] and "Error" in errors[0]["error"]
    splits = {t.scene_id: t.split for t in plan_scenes(3, seed=5, val_fraction=0.5)}
    for row in manifest:
        assert row["split"] == splits[row["scene_id"]] and row["num_frames"] == 10
        _check_scene(row["uri"], row["split"])
    assert "[make_scenes] 2 done, 0 already done, 1 failed of 3" in capsys.readouterr().out

    first_json = tmp_path / "scenes" / "synthetic" / "syn-000000" / "scene.json"
    mtime = os.stat(first_json).st_mtime_ns
    blocker.unlink()
    assert main(args) == 0
    out_text = capsys.readouterr().out
    assert "1 done, 2 already done, 0 failed of 3" in out_text and os.stat(first_json).st_mtime_ns == mtime
    manifest = storage.read_jsonl(storage.join(base, "manifest.jsonl"))
    assert [r["scene_id"] for r in manifest] == ["syn-000000", "syn-000001", "syn-000002"]
    assert storage.read_jsonl(storage.join(base, "errors.jsonl")) == []
    assert len([r.dir for r in list_scenes(f"{out}/scenes/synthetic")]) == 3

    assert main(args) == 0  # everything done: nothing is generated again
    assert "0 done, 3 already done, 0 failed of 3" in capsys.readouterr().out
    assert os.stat(first_json).st_mtime_ns == mtime


def test_writes_to_s3(ray_local, moto_s3):
    out = f"{moto_s3}/data"
    assert main(["--num-scenes", "2", "--out", out, "--seed", "1", "--val-fraction", "0", *SMALL]) == 0
    folders = [r.dir for r in list_scenes(f"{out}/scenes/synthetic")]
    assert folders == [f"{out}/scenes/synthetic/syn-000000", f"{out}/scenes/synthetic/syn-000001"]
    for folder in folders:
        _check_scene(folder, "train")
    assert len(storage.read_jsonl(f"{out}/scenes/synthetic/manifest.jsonl")) == 2
