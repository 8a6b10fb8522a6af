"""jobs/precompute_tokens.py end to end on a local Ray: local folders and moto S3, failures, resuming."""

from __future__ import annotations

import re

import numpy as np

from jobs.precompute_tokens import main
from vlm3r_core import storage
from vlm3r_core.scene import Scene, write_scene
from vlm3r_core.tokens import (
    EncoderInfo,
    VideoTokens,
    iter_video_tokens,
    read_encoder_info,
    read_manifest,
    read_token_table,
    write_token_shard,
)
from vlm3r_core.video import write_video

NUM_FRAMES = 4
ENCODER_NAME = f"tiny-112px-{NUM_FRAMES}f-vf"  # tiny preset: CUT3R at 112 px


def write_video_scene(root: str, scene_id: str, seed: int, corrupt: bool = False) -> str:
    """A minimal valid scene with a 10-frame 48x64 H.264 video (or garbage bytes when ``corrupt``)."""
    n, h, w = 10, 48, 64
    scene = Scene.from_dict({
        "scene_id": scene_id, "dataset": "synthetic", "split": "train",
        "room": {"floor_polygon": [[0, 0], [4, 0], [4, 3]], "floor_z": 0.0, "height": 2.5, "area_m2": 6.0},
        "objects": [],
        "video": {"uri": "video.mp4", "fps": 10.0, "num_frames": n, "width": w, "height": h},
        "frames": [
            {"index": i, "timestamp": i / 10, "cam_to_world": np.eye(4).tolist(),
             "intrinsics": {"fx": 50.0, "fy": 50.0, "cx": w / 2, "cy": h / 2}, "visible": []}
            for i in range(n)
        ],
    })  # fmt: skip
    folder = write_scene(scene, root)
    if corrupt:
        storage.write_bytes(storage.join(folder, "video.mp4"), b"this is not an mp4 file")
    else:
        frames = np.random.default_rng(seed).integers(0, 255, (n, h, w, 3), dtype=np.uint8)
        write_video(storage.join(folder, "video.mp4"), frames, fps=10)
    return folder


def read_errors(out_dir: str) -> list[dict]:
    return storage.read_jsonl(f"{out_dir}/errors.jsonl")


def run(root: str, capsys) -> tuple[int, str]:
    argv = ["--scenes", root, "--out", root, "--preset", "tiny", "--num-frames", str(NUM_FRAMES),
            "--with-vision-features", "--batch-size", "2"]  # fmt: skip
    code = main(argv)
    summary = [line for line in capsys.readouterr().out.splitlines() if " failed of " in line]
    assert len(summary) == 1, summary
    return code, summary[0]


def shard_files(out_dir: str) -> dict[str, bytes]:
    return {u: storage.read_bytes(u) for u in storage.list_files(out_dir, ".parquet")}


def test_local_run_reports_corrupt_video_and_rerun_encodes_only_new_videos(ray_local, tmp_path, capsys):
    root = str(tmp_path / "data")
    write_video_scene(root, "a", seed=0)
    write_video_scene(root, "b", seed=1)
    write_video_scene(root, "broken", seed=2, corrupt=True)
    out_dir = f"{root}/tokens/{ENCODER_NAME}"

    code, summary = run(root, capsys)

    assert code == 0
    assert "[precompute_tokens] 2 done, 0 already done, 1 failed of 3" in summary, summary
    assert sorted(read_manifest(out_dir)) == ["synthetic/a", "synthetic/b"]
    (error,) = read_errors(out_dir)
    assert error["video_id"] == "synthetic/broken" and error["video"].endswith("broken/video.mp4")
    assert "VideoDecodeError" in error["error"] and "cannot open video" in error["error"]
    table = read_token_table(out_dir)
    videos = {v.video_id: v for v in iter_video_tokens(table)}
    assert sorted(videos) == ["synthetic/a", "synthetic/b"]
    assert videos["synthetic/a"].vision_features.shape[0] == NUM_FRAMES
    assert videos["synthetic/a"].patch_tokens.dtype == np.float16
    assert read_encoder_info(out_dir).name == ENCODER_NAME
    first_shards = shard_files(out_dir)
    assert sum(len(b) for b in first_shards.values()) == int(re.search(r", (\d+) bytes", summary).group(1))

    # Re-run with one more scene: only the new video is encoded; finished shards are untouched.
    write_video_scene(root, "c", seed=3)
    code, summary = run(root, capsys)

    assert code == 0
    assert "1 done, 2 already done, 1 failed of 4" in summary, summary
    assert sorted(read_manifest(out_dir)) == ["synthetic/a", "synthetic/b", "synthetic/c"]
    after = shard_files(out_dir)
    assert {u: after[u] for u in first_shards} == first_shards
    assert len(after) == len(first_shards) + 1
    assert sorted(read_token_table(out_dir, columns=["video_id"]).column("video_id").to_pylist()) == [
        "synthetic/a", "synthetic/b", "synthetic/c",
    ]  # fmt: skip

    # The same state gives the same verdict: only the corrupt video is left, and it fails again.
    code, summary = run(root, capsys)
    assert code == 0 and "0 done, 3 already done, 1 failed of 4" in summary, summary


def test_a_video_shorter_than_its_scene_is_a_recorded_failure(ray_local, tmp_path, capsys):
    root = str(tmp_path / "data")
    write_video_scene(root, "a", seed=0)
    folder = write_video_scene(root, "short", seed=1)
    frames = np.random.default_rng(1).integers(0, 255, (5, 48, 64, 3), dtype=np.uint8)
    write_video(storage.join(folder, "video.mp4"), frames, fps=10)  # 5 frames, scene.json says 10

    code, summary = run(root, capsys)
    assert code == 0 and "1 done, 0 already done, 1 failed of 2" in summary, summary
    (error,) = read_errors(f"{root}/tokens/{ENCODER_NAME}")
    assert error["video_id"] == "synthetic/short" and "5 frames, scene.json says 10" in error["error"]


def test_s3_run_writes_readable_shards_and_manifest(ray_local, moto_s3, capsys):
    root = f"{moto_s3}/data"
    write_video_scene(root, "a", seed=0)
    write_video_scene(root, "b", seed=1)

    code, summary = run(root, capsys)

    assert code == 0 and "2 done, 0 already done, 0 failed of 2" in summary, summary
    out_dir = f"{root}/tokens/{ENCODER_NAME}"
    assert sorted(read_manifest(out_dir)) == ["synthetic/a", "synthetic/b"]
    assert read_errors(out_dir) == []
    table = read_token_table(out_dir)
    assert sorted(table.column("video_id").to_pylist()) == ["synthetic/a", "synthetic/b"]
    assert table.schema.field("camera_tokens").type.extension_name == "arrow.fixed_shape_tensor"


def test_a_shard_set_of_another_encoder_is_refused(tmp_path, capsys):
    root = str(tmp_path / "data")
    write_video_scene(root, "a", seed=0)
    # Same folder name, but SigLIP at another size: mixing the two would corrupt training data.
    other = EncoderInfo(preset="tiny", checkpoint="", image_size=112, num_frames=NUM_FRAMES, vision_image_size=56)
    assert other.name == ENCODER_NAME
    rng = np.random.default_rng(0)
    tokens = VideoTokens(
        "synthetic/z", np.arange(NUM_FRAMES), np.arange(NUM_FRAMES) / 10.0, 1.0,
        rng.normal(size=(NUM_FRAMES, 1, 8)), rng.normal(size=(NUM_FRAMES, 49, 8)), rng.normal(size=(NUM_FRAMES, 16, 4)),
    )  # fmt: skip
    write_token_shard(f"{root}/tokens/{ENCODER_NAME}/part-0.parquet", [tokens], other)

    assert main(["--scenes", root, "--out", root, "--num-frames", str(NUM_FRAMES), "--with-vision-features"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("[precompute_tokens] error: ValueError: ") and "holds shards of another encoder" in line


def test_export_3d_writes_each_videos_reconstruction_beside_the_same_tokens(ray_local, tmp_path, capsys):
    import open3d as o3d

    plain, exported = str(tmp_path / "plain"), str(tmp_path / "exported")
    for root in (plain, exported):
        write_video_scene(root, "a", seed=0)
    assert run(plain, capsys)[0] == 0
    argv = ["--scenes", exported, "--out", exported, "--preset", "tiny", "--num-frames", str(NUM_FRAMES),
            "--with-vision-features", "--export-3d", "--export-confidence", "1"]  # fmt: skip
    assert main(argv) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert "1 done, 0 already done, 0 failed of 1" in summary and "1 reconstructions" in summary, summary
    folder = f"{exported}/reconstructions/synthetic/a"
    cloud = o3d.io.read_point_cloud(f"{folder}/points.ply")
    assert len(cloud.points) > 0 and cloud.has_colors()
    trajectory = storage.read_json(f"{folder}/trajectory.json")
    assert [c["frame_index"] for c in trajectory["cameras"]] == [0, 3, 6, 9]  # the sampled frames
    assert trajectory["points"] == len(cloud.points)
    # The point heads change nothing in the tokens.
    (a,), (b,) = (list(iter_video_tokens(read_token_table(f"{r}/tokens/{ENCODER_NAME}"))) for r in (plain, exported))
    np.testing.assert_array_equal(a.patch_tokens, b.patch_tokens)
    np.testing.assert_array_equal(a.camera_tokens, b.camera_tokens)
    # An untrained CUT3R is never confident: at the default threshold the tokens are kept, with a warning.
    again = str(tmp_path / "strict")
    write_video_scene(again, "a", seed=0)
    assert main(["--scenes", again, "--out", again, "--preset", "tiny", "--num-frames", str(NUM_FRAMES), "--export-3d"]) == 0
    out, err = capsys.readouterr()
    assert "0 reconstructions" in out.splitlines()[-1] and "no reconstruction of synthetic/a" in err
    assert main(["--scenes", again, "--out", again, "--export-confidence", "0.5"]) == 1
