"""jobs/convert_scenes.py on local Ray: ScanNet fixture scans in, scene folders on S3 (moto) out."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "datagen" / "readers"))

import source_fixtures as sf  # noqa: E402

from jobs.convert_scenes import main  # noqa: E402
from vlm3r_core import storage  # noqa: E402
from vlm3r_core.scene import read_scene  # noqa: E402
from vlm3r_core.video import read_video  # noqa: E402


def errors_uri(out: str, dataset: str) -> str:
    return f"{out}/scenes/{dataset}/errors.jsonl"


def read_manifest(out: str, dataset: str) -> dict[str, dict]:
    return {r["scene_id"]: r for r in storage.read_jsonl(f"{out}/scenes/{dataset}/manifest.jsonl")}


def test_convert_scenes_records_failures_and_resumes(ray_local, moto_s3, tmp_path, capsys):
    scans = tmp_path / "scannet" / "scans"
    sf.write_scannet_scene(scans, "scene0000_00")
    broken = sf.write_scannet_scene(scans, "scene0011_00")
    sf.write_scannet_scene(scans, "scene0099_00")  # in no official split list
    mesh = broken / "scene0011_00_vh_clean_2.ply"
    intact = mesh.read_bytes()
    mesh.write_bytes(intact[:-40])
    splits = tmp_path / "Benchmark"
    splits.mkdir()
    (splits / "scannetv2_train.txt").write_text("scene0000_00\n")
    (splits / "scannetv2_val.txt").write_text("scene0011_00\n")
    out = f"{moto_s3}/vlm3r-data"
    argv = [
        "--dataset",
        "scannet",
        "--source",
        str(tmp_path / "scannet"),
        "--out",
        out,
        "--splits-dir",
        str(splits),
    ]

    assert main(argv) == 0  # two scenes failed, the others were converted
    errors = {e["scene_id"]: e["error"] for e in storage.read_jsonl(errors_uri(out, "scannet"))}
    assert set(errors) == {"scene0011_00", "scene0099_00"}
    assert "scene0011_00_vh_clean_2.ply: truncated" in errors["scene0011_00"]
    assert "none of the official split lists" in errors["scene0099_00"]
    manifest = read_manifest(out, "scannet")
    assert list(manifest) == ["scene0000_00"]
    row = manifest["scene0000_00"]
    assert (row["split"], row["num_frames"], row["frames_dropped"]) == ("train", 3, 1)
    scene = read_scene(row["uri"])
    assert row["uri"] == f"{out}/scenes/scannet/scene0000_00" and scene.split == "train"
    assert read_video(scene.video_uri(row["uri"]), num_samples=3).num_frames == scene.video.num_frames == 3
    assert (
        "[convert_scenes] 1 done, 0 already done, 2 failed of 3, 1 frames dropped" in capsys.readouterr().out
    )

    mesh.write_bytes(intact)
    (splits / "scannetv2_test.txt").write_text("scene0099_00\n")
    assert main(argv) == 0
    assert storage.read_jsonl(errors_uri(out, "scannet")) == []
    manifest = read_manifest(out, "scannet")
    assert {k: r["split"] for k, r in manifest.items()} == {
        "scene0000_00": "train", "scene0011_00": "val", "scene0099_00": "test"
    }  # fmt: skip
    assert (
        "[convert_scenes] 2 done, 1 already done, 0 failed of 3, 2 frames dropped" in capsys.readouterr().out
    )


def test_convert_arkitscenes_turns_frames_upright_by_metadata(ray_local, tmp_path, capsys):
    fold = tmp_path / "3dod" / "Validation"
    sf.write_arkit_scene(fold, "41069025", sky_direction="Left")
    sf.write_arkit_scene(fold, "41069026")  # not in metadata.csv
    metadata = tmp_path / "3dod" / "metadata.csv"
    metadata.write_text("video_id,visit_id,fold,sky_direction\n41069025,421035,Validation,Left\n")
    out = str(tmp_path / "out")
    source = ["--dataset", "arkitscenes", "--source", str(tmp_path / "3dod"), "--out", out]

    assert main([*source, "--arkitscenes-metadata", str(metadata)]) == 0
    (row,) = read_manifest(out, "arkitscenes").values()
    scene = read_scene(row["uri"])
    assert (scene.scene_id, scene.video.width, scene.video.height) == ("41069025", 24, 32)  # portrait
    assert scene.extra["source"]["sky_direction"] == "Left"
    assert read_video(scene.video_uri(row["uri"]), num_samples=3).frames.shape[1:3] == (32, 24)
    (error,) = storage.read_jsonl(errors_uri(out, "arkitscenes"))
    assert error["scene_id"] == "41069026" and f"is not in {metadata}" in error["error"]
    assert "[convert_scenes] 1 done, 0 already done, 1 failed of 2" in capsys.readouterr().out

    assert (
        main(
            [
                "--dataset",
                "scannet",
                "--source",
                str(tmp_path),
                "--out",
                out,
                "--arkitscenes-metadata",
                "m.csv",
            ]
        )
        == 1
    )
    assert "--arkitscenes-metadata applies to --dataset arkitscenes" in capsys.readouterr().err
