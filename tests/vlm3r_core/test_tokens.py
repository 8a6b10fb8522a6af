"""Token shard format: round trip, the standard tensor type, fp16, encoder checks, manifest recovery."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

from vlm3r_core import storage
from vlm3r_core.tokens import (
    EncoderInfo,
    VideoTokens,
    iter_video_tokens,
    read_encoder_info,
    read_manifest,
    read_token_table,
    reconcile_manifest,
    shard_name,
    token_dir,
    write_token_shard,
)

T, N, C, P, CV = 4, 9, 8, 6, 12
ENCODER = EncoderInfo(preset="tiny", checkpoint="", image_size=48, num_frames=T, vision_image_size=24)


def make_tokens(video_id: str, seed: int, vision: bool = True, poses: bool = True) -> VideoTokens:
    rng = np.random.default_rng(seed)
    return VideoTokens(
        video_id=video_id,
        frame_indices=np.array([0, 3, 6, 9], dtype=np.int64),
        timestamps=np.array([0, 3, 6, 9], dtype=np.float64) / 30,
        duration_s=10 / 30,
        camera_tokens=rng.normal(size=(T, 1, C)).astype(np.float32),
        patch_tokens=rng.normal(size=(T, N, C)).astype(np.float32),
        vision_features=rng.normal(size=(T, P, CV)).astype(np.float32) if vision else None,
        poses=rng.normal(size=(T, 7)) * 10 if poses else None,
    )


def test_round_trip_keeps_values_in_fp16_and_poses_in_fp32(tmp_path):
    folder = token_dir(str(tmp_path), ENCODER)
    videos = [make_tokens("synthetic/a", 0), make_tokens("synthetic/b", 1)]
    nbytes = write_token_shard(storage.join(folder, "part-0.parquet"), videos, ENCODER)
    assert nbytes == (tmp_path / "tokens" / ENCODER.name / "part-0.parquet").stat().st_size

    table = read_token_table(folder)
    assert table.schema.field("patch_tokens").type.value_type == pa.float16()
    assert table.schema.field("poses").type.value_type == pa.float32()
    back = {v.video_id: v for v in iter_video_tokens(table)}
    assert sorted(back) == ["synthetic/a", "synthetic/b"]
    for want in videos:
        got = back[want.video_id]
        assert got.patch_tokens.dtype == np.float16 and got.patch_tokens.shape == (T, N, C)
        assert got.camera_tokens.shape == (T, 1, C) and got.vision_features.shape == (T, P, CV)
        np.testing.assert_array_equal(got.patch_tokens, want.patch_tokens.astype(np.float16))
        np.testing.assert_array_equal(got.vision_features, want.vision_features.astype(np.float16))
        np.testing.assert_array_equal(got.poses, want.poses.astype(np.float32))
        np.testing.assert_array_equal(got.frame_indices, want.frame_indices)
        np.testing.assert_allclose(got.timestamps, want.timestamps)
        assert got.duration_s == pytest.approx(want.duration_s)
    assert read_encoder_info(folder) == ENCODER


def test_plain_pyarrow_without_ray_reads_standard_fixed_shape_tensors(tmp_path):
    uri = str(tmp_path / "part-0.parquet")
    write_token_shard(uri, [make_tokens("synthetic/a", 0)], ENCODER)
    script = textwrap.dedent(
        f"""
        import sys, pyarrow.parquet as pq
        table = pq.read_table({uri!r})
        assert "ray" not in sys.modules
        field = table.schema.field("patch_tokens")
        print(field.type.extension_name, list(field.type.shape), field.type.value_type)
        print(table.column("patch_tokens").combine_chunks().to_numpy_ndarray().shape)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["arrow.fixed_shape_tensor [4, 9, 8] halffloat", "(1, 4, 9, 8)"]


def test_optional_columns_can_be_left_out(tmp_path):
    encoder = EncoderInfo(preset="tiny", checkpoint="", image_size=48, num_frames=T)
    uri = str(tmp_path / "part-0.parquet")
    write_token_shard(uri, [make_tokens("synthetic/a", 0, vision=False, poses=False)], encoder)
    table = read_token_table(uri)
    assert table.column_names == ["video_id", "frame_indices", "timestamps", "duration_s", "camera_tokens", "patch_tokens"]
    (video,) = iter_video_tokens(table)
    assert video.vision_features is None and video.poses is None


def test_read_filters_by_video_id_and_columns(tmp_path):
    folder = str(tmp_path / "set")
    write_token_shard(f"{folder}/part-0.parquet", [make_tokens("synthetic/a", 0), make_tokens("synthetic/b", 1)], ENCODER)
    write_token_shard(f"{folder}/part-1.parquet", [make_tokens("synthetic/c", 2)], ENCODER)
    table = read_token_table(folder, video_ids=["synthetic/c", "synthetic/a"], columns=["camera_tokens"])
    assert sorted(table.column("video_id").to_pylist()) == ["synthetic/a", "synthetic/c"]
    assert table.column_names == ["video_id", "camera_tokens"]


def test_mixed_encoders_and_duplicates_are_refused(tmp_path):
    folder = str(tmp_path / "set")
    write_token_shard(f"{folder}/part-0.parquet", [make_tokens("synthetic/a", 0)], ENCODER)
    write_token_shard(f"{folder}/part-1.parquet", [make_tokens("synthetic/a", 1)], ENCODER)
    with pytest.raises(ValueError, match="'synthetic/a' is stored twice"):
        read_token_table(folder)
    other = EncoderInfo(preset="tiny", checkpoint="", image_size=64, num_frames=T, vision_image_size=24)
    write_token_shard(f"{folder}/part-1.parquet", [make_tokens("synthetic/b", 1)], other)
    with pytest.raises(ValueError, match="mixed encoders"):
        read_token_table(folder)


def test_shard_rejects_inconsistent_videos(tmp_path):
    a = make_tokens("synthetic/a", 0)
    b = make_tokens("synthetic/b", 1, vision=False)
    with pytest.raises(ValueError, match="vision_features present for some videos"):
        write_token_shard(str(tmp_path / "x.parquet"), [a, b], ENCODER)
    with pytest.raises(ValueError, match="'synthetic/bad': patch_tokens must be"):
        VideoTokens("synthetic/bad", a.frame_indices, a.timestamps, 1.0, a.camera_tokens, a.patch_tokens[:, :, :3])
    with pytest.raises(ValueError, match="to_pylist"):
        VideoTokens.from_row({**a.__dict__, "patch_tokens": a.patch_tokens.ravel().tolist()})


def test_encoder_name_and_validation():
    assert ENCODER.name == "tiny-48px-4f-vf"
    ckpt = EncoderInfo(preset="vlm3r-7b", checkpoint="s3://w/cut3r_512_dpt_4_64.pth", image_size=432, num_frames=32)
    assert ckpt.name == "vlm3r-7b-cut3r_512_dpt_4_64-432px-32f"
    assert EncoderInfo.from_json(ckpt.to_json()) == ckpt
    with pytest.raises(ValueError, match="dtype"):
        EncoderInfo(preset="tiny", checkpoint="", image_size=48, num_frames=4, dtype="bfloat16")


def test_reconcile_adopts_written_shards_and_drops_missing_ones(tmp_path):
    folder = str(tmp_path / "set")
    assert read_manifest(folder) == {} and reconcile_manifest(folder) == {}
    write_token_shard(f"{folder}/part-0.parquet", [make_tokens("synthetic/a", 0)], ENCODER)
    write_token_shard(f"{folder}/part-1.parquet", [make_tokens("synthetic/b", 1), make_tokens("synthetic/c", 2)], ENCODER)
    # An interrupted run: part-1 is written but not yet listed; part-9 is listed but gone.
    storage.write_jsonl(f"{folder}/manifest.jsonl", [
        {"video_id": "synthetic/a", "shard": "part-0.parquet"}, {"video_id": "synthetic/z", "shard": "part-9.parquet"},
    ])  # fmt: skip
    assert reconcile_manifest(folder) == {
        "synthetic/a": {"video_id": "synthetic/a", "shard": "part-0.parquet"},
        "synthetic/b": {"video_id": "synthetic/b", "shard": "part-1.parquet"},
        "synthetic/c": {"video_id": "synthetic/c", "shard": "part-1.parquet"},
    }
    write_token_shard(f"{folder}/part-2.parquet", [make_tokens("synthetic/a", 3)], ENCODER)
    with pytest.raises(ValueError, match="'synthetic/a' is stored in both"):
        reconcile_manifest(folder)


def test_shard_name_depends_only_on_the_set_of_videos():
    name = shard_name(["synthetic/b", "synthetic/a"])
    assert name == shard_name(["synthetic/a", "synthetic/b"]) and name.startswith("part-") and name.endswith(".parquet")
    assert name != shard_name(["synthetic/a"])
