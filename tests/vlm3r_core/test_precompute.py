"""Precompute stages without Ray: listing, decoding with error records, encoding into a shard."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vlm3r_core import storage
from vlm3r_core.geometry import Cut3r
from vlm3r_core.geometry.checkpoint import save_cut3r
from vlm3r_core.precompute import (
    TokenEncoder,
    VideoSource,
    decode_videos,
    encoder_info,
    list_videos,
    model_config,
)
from vlm3r_core.scene import Scene, write_scene
from vlm3r_core.tokens import iter_video_tokens, read_token_table, token_dir
from vlm3r_core.video import sample_frame_indices, write_video
from vlm3r_core.vlm import Vlm3rForConditionalGeneration, Vlm3rProcessor

NUM_FRAMES = 4


def write_video_scene(root: str, scene_id: str, num_frames: int = 10, size=(48, 64), seed: int = 0) -> str:
    """A minimal valid scene with a real H.264 video of moving noise; returns the scene folder."""
    h, w = size
    frames = np.random.default_rng(seed).integers(0, 255, (num_frames, h, w, 3), dtype=np.uint8)
    scene = Scene.from_dict({
        "scene_id": scene_id, "dataset": "synthetic", "split": "train",
        "room": {"floor_polygon": [[0, 0], [4, 0], [4, 3]], "floor_z": 0.0, "height": 2.5, "area_m2": 6.0},
        "objects": [],
        "video": {"uri": "video.mp4", "fps": 10.0, "num_frames": num_frames, "width": w, "height": h},
        "frames": [
            {"index": i, "timestamp": i / 10, "cam_to_world": np.eye(4).tolist(),
             "intrinsics": {"fx": 50.0, "fy": 50.0, "cx": w / 2, "cy": h / 2}, "visible": []}
            for i in range(num_frames)
        ],
    })  # fmt: skip
    folder = write_scene(scene, root)
    write_video(storage.join(folder, "video.mp4"), frames, fps=10)
    return folder


def as_batch(sources: list[VideoSource]) -> dict[str, np.ndarray]:
    return {k: np.array([getattr(s, k) for s in sources], dtype=object) for k in ("video_id", "scene", "video")}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Toy models run fastest on one thread (and do not fight the other tests for the 2 cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny_cfg():
    return model_config("tiny", num_frames=NUM_FRAMES)


def test_list_videos_from_scenes_and_from_a_jsonl_list(tmp_path):
    root = str(tmp_path)
    a = write_video_scene(root, "s-b")
    b = write_video_scene(root, "s-a")
    assert list_videos(root) == [VideoSource("synthetic/s-a", scene=b), VideoSource("synthetic/s-b", scene=a)]
    assert [s.video_id for s in list_videos(f"{root}/scenes/synthetic")] == ["synthetic/s-a", "synthetic/s-b"]

    (tmp_path / "videos.jsonl").write_text(
        json.dumps({"video_id": "scannet/scene0001_00", "video": "scannet/scene0001_00.mp4"}) + "\n"
        + json.dumps({"video_id": "arkitscenes/42", "video": "s3://bench/arkitscenes/42.mp4"}) + "\n"
    )
    assert list_videos(f"{root}/videos.jsonl") == [
        VideoSource("arkitscenes/42", video="s3://bench/arkitscenes/42.mp4"),
        VideoSource("scannet/scene0001_00", video=f"{root}/scannet/scene0001_00.mp4"),
    ]
    (tmp_path / "dup.jsonl").write_text(json.dumps({"video_id": "x/1", "video": "a.mp4"}) + "\n" + json.dumps({"video_id": "x/1", "video": "b.mp4"}) + "\n")
    with pytest.raises(ValueError, match=r"more than once: \['x/1'\]"):
        list_videos(f"{root}/dup.jsonl")
    with pytest.raises(FileNotFoundError, match="no videos"):
        list_videos(str(tmp_path / "empty"))


def test_decode_samples_by_the_rule_and_records_failures_with_reasons(tmp_path):
    root = str(tmp_path)
    good = write_video_scene(root, "good", num_frames=10)
    corrupt = write_video_scene(root, "corrupt")
    storage.write_bytes(f"{corrupt}/video.mp4", b"not a video at all")
    missing = write_video_scene(root, "missing")
    storage.remove(f"{missing}/video.mp4")
    sources = [VideoSource("synthetic/good", scene=good), VideoSource("synthetic/corrupt", scene=corrupt),
               VideoSource("synthetic/missing", scene=missing), VideoSource("synthetic/noscene", scene=f"{root}/nowhere")]  # fmt: skip

    out = decode_videos(as_batch(sources), num_frames=NUM_FRAMES)

    assert list(out["video_id"]) == [s.video_id for s in sources]
    assert out["error"][0] == "" and out["video"][0] == f"{good}/video.mp4"
    assert out["frames"][0].shape == (NUM_FRAMES, 48, 64, 3) and out["frames"][0].dtype == np.uint8
    np.testing.assert_array_equal(out["frame_indices"][0], sample_frame_indices(10, NUM_FRAMES))
    np.testing.assert_allclose(out["timestamps"][0], sample_frame_indices(10, NUM_FRAMES) / 10)
    assert out["duration_s"][0] == pytest.approx(1.0)
    assert "VideoDecodeError" in out["error"][1] and "corrupt/video.mp4" in out["error"][1]
    assert "no such video file" in out["error"][2]
    assert "nowhere/scene.json" in out["error"][3]
    for i in (1, 2, 3):
        assert out["frames"][i].shape[0] == 0


def test_encoder_matches_the_model_and_writes_one_readable_shard(tmp_path, tiny_cfg):
    root = str(tmp_path)
    folders = [write_video_scene(root, f"v{i}", size=(48, 64) if i else (32, 32), seed=i) for i in range(2)]
    bad = write_video_scene(root, "bad")
    storage.write_bytes(f"{bad}/video.mp4", b"\x00" * 100)
    sources = [VideoSource(f"synthetic/v{i}", scene=f) for i, f in enumerate(folders)] + [VideoSource("synthetic/bad", scene=bad)]
    decoded = decode_videos(as_batch(sources), num_frames=NUM_FRAMES)
    encoder = encoder_info(tiny_cfg, with_vision_features=True)
    out_dir = token_dir(root, encoder)

    token_encoder = TokenEncoder(tiny_cfg, encoder, out_dir)
    records = token_encoder(decoded)

    assert list(records["video_id"]) == ["synthetic/v0", "synthetic/v1", "synthetic/bad"]
    shard = records["shard"][0]
    assert shard.startswith("part-") and records["shard"][1] == shard and records["shard"][2] == ""
    assert "VideoDecodeError" in records["error"][2]
    assert records["shard_bytes"][0] == (tmp_path / "tokens" / encoder.name / shard).stat().st_size
    # A retried batch (its actor died after writing) rewrites the same shard, never a second copy.
    again = token_encoder(decoded)
    assert list(again["shard"]) == list(records["shard"])
    assert storage.list_files(out_dir, ".parquet") == [f"{out_dir}/{shard}"]
    stored = {v.video_id: v for v in iter_video_tokens(read_token_table(out_dir))}
    assert sorted(stored) == ["synthetic/v0", "synthetic/v1"]

    # The model's own frozen-encoder path (evaluation from raw video, serving): the same function.
    model = Vlm3rForConditionalGeneration.from_config(tiny_cfg)
    pixels = Vlm3rProcessor.from_config(tiny_cfg).preprocess_frames([decoded["frames"][0], decoded["frames"][1]])
    with torch.inference_mode():
        feats = model.encode_frames(pixels)
    for b in range(2):
        v = stored[f"synthetic/v{b}"]
        n = (tiny_cfg.cut3r_image_size // 16) ** 2
        assert v.patch_tokens.dtype == np.float16 and v.patch_tokens.shape == (NUM_FRAMES, n, tiny_cfg.spatial_dim)
        assert v.poses.shape == (NUM_FRAMES, 7)
        for name in ("camera_tokens", "patch_tokens", "vision_features"):
            want = getattr(feats, name)[b].float().numpy()
            np.testing.assert_array_equal(getattr(v, name), want.astype(np.float16), err_msg=name)
        np.testing.assert_array_equal(v.frame_indices, decoded["frame_indices"][b])


def test_encoder_refuses_a_mismatched_encoder_info(tmp_path, tiny_cfg):
    other = encoder_info(model_config("tiny", num_frames=NUM_FRAMES, size=64), with_vision_features=False)
    with pytest.raises(ValueError, match="does not match the model config"):
        TokenEncoder(tiny_cfg, other, str(tmp_path))


def test_a_failed_shard_write_becomes_error_records_not_a_failed_run(tmp_path, tiny_cfg):
    root = str(tmp_path)
    folder = write_video_scene(root, "v0")
    decoded = decode_videos(as_batch([VideoSource("synthetic/v0", scene=folder)]), num_frames=NUM_FRAMES)
    encoder = encoder_info(tiny_cfg, with_vision_features=False)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the shard folder should be")

    records = TokenEncoder(tiny_cfg, encoder, str(blocked))(decoded)

    assert list(records["shard"]) == [""] and list(records["shard_bytes"]) == [0]
    assert records["error"][0].startswith("writing part-") and "Error" in records["error"][0]


def test_a_video_that_disagrees_with_its_scene_is_an_error_record(tmp_path):
    folder = write_video_scene(str(tmp_path), "short", num_frames=10)
    frames = np.zeros((5, 48, 64, 3), np.uint8)
    write_video(f"{folder}/video.mp4", frames, fps=10)
    small = write_video_scene(str(tmp_path), "small", num_frames=10)
    write_video(f"{small}/video.mp4", np.zeros((10, 32, 32, 3), np.uint8), fps=10)

    out = decode_videos(as_batch([VideoSource("synthetic/short", scene=folder), VideoSource("synthetic/small", scene=small)]),
                        num_frames=NUM_FRAMES)  # fmt: skip

    assert "SceneValidationError" in out["error"][0] and "5 frames, scene.json says 10" in out["error"][0]
    assert "32x32 pixels, scene.json says 64x48" in out["error"][1]
    assert out["frames"][0].shape[0] == out["frames"][1].shape[0] == 0


def test_checkpoint_replaces_the_cut3r_weights_and_names_the_shard_set(tmp_path, tiny_cfg):
    torch.manual_seed(123)
    trained = Cut3r.from_config(tiny_cfg.cut3r)
    save_cut3r(trained, str(tmp_path / "cut3r-trained"))
    cfg = model_config("tiny", checkpoint=str(tmp_path / "cut3r-trained"), num_frames=NUM_FRAMES)
    encoder = encoder_info(cfg, with_vision_features=False)
    assert encoder.name == f"tiny-cut3r_trained-112px-{NUM_FRAMES}f"  # "-" separates the name's parts
    frames = np.random.default_rng(0).integers(0, 255, (NUM_FRAMES, 32, 32, 3), dtype=np.uint8)

    (out,) = TokenEncoder(cfg, encoder, str(tmp_path / "out")).encode([frames])

    pixels = Vlm3rProcessor.from_config(cfg).preprocess_frames([frames]).cut3r
    with torch.inference_mode():
        want = trained.encode_video(pixels).patch_tokens[0].numpy()
    np.testing.assert_allclose(out["patch_tokens"], want, atol=1e-5)
    assert "vision_features" not in out
