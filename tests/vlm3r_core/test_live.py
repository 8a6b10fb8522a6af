"""Live sessions: equivalence with the offline encoders, the keyframe policy, bounded memory,
snapshots (in process, through storage, in another process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

from vlm3r_core import prompting
from vlm3r_core.geometry import Cut3r, get_cut3r_config
from vlm3r_core.geometry.checkpoint import save_cut3r
from vlm3r_core.live import KeyframePolicy, LiveSession
from vlm3r_core.presets import get_preset
from vlm3r_core.video import read_video, write_video
from vlm3r_core.vlm import Vlm3rForConditionalGeneration, Vlm3rProcessor
from vlm3r_core.vlm.model import siglip_features

ROOT = Path(__file__).resolve().parents[2]
ENCODERS = ("vision_tower", "cut3r")
FIELDS = ("vision_features", "camera_tokens", "patch_tokens")


@pytest.fixture(scope="module")
def config():
    return get_preset("tiny")


@pytest.fixture(scope="module")
def encoders(config):
    return Vlm3rForConditionalGeneration.from_config(config, components=ENCODERS)


def random_frames(count: int, height: int = 24, width: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, height, width, 3), dtype=np.uint8)


def push_all(session: LiveSession, frames: np.ndarray, start: int = 0, fps: float = 10.0) -> list:
    return [session.push(f, (start + i) / fps) for i, f in enumerate(frames)]


# Equivalence with the offline path -----------------------------------------------------------------


def test_a_session_fed_the_sampled_frames_answers_exactly_like_the_offline_request(config, tmp_path):
    """The 32 frames `read_video` samples, pushed one by one, give torch.equal SigLIP features and
    CUT3R tokens, the same prompt and the same generated answer as `encode_frames` on them."""
    model = Vlm3rForConditionalGeneration.from_config(config)
    processor = Vlm3rProcessor.from_config(config)
    uri = str(tmp_path / "video.mp4")
    write_video(uri, random_frames(45, 48, 64, seed=1), fps=15, deterministic=True)
    video = read_video(uri, num_samples=config.num_frames)
    assert len(video.frames) == 32 and len(set(video.frame_indices.tolist())) == 32

    offline = model.encode_frames(processor.preprocess_frames([video.frames]))
    session = LiveSession(model, KeyframePolicy(max_keyframes=32))
    for frame, t in zip(video.frames, video.timestamps, strict=True):
        assert session.push(frame, t).updated
    live = session.features(duration_s=video.duration_s)

    for name in FIELDS:
        assert torch.equal(getattr(live.features, name), getattr(offline, name)), name
    assert torch.equal(live.features.frame_mask, offline.frame_mask)
    assert live.timestamps == tuple(video.timestamps.tolist())

    def answer(features, timestamps, duration):
        message = prompting.build_user_message(
            "How many chair(s) are in this room?", timestamps=timestamps, duration_s=duration, config=config.prompt
        )
        batch = processor.build_batch([message])
        return model.generate(batch.input_ids, batch.attention_mask, features=features, max_new_tokens=4)

    assert torch.equal(
        answer(live.features, live.timestamps, live.duration_s),
        answer(offline, video.timestamps.tolist(), video.duration_s),
    )


def test_siglip_features_of_a_frame_do_not_depend_on_its_batch():
    """With 49 x 72 activations per frame, PyTorch's vectorised CPU GELU handles the last elements
    of a call with the scalar tanh; the model applies it frame by frame so that a frame encoded alone
    (live) equals the same frame inside its video's batch (offline), with 1 and 2 threads."""
    vision = dict(get_preset("tiny").vision, intermediate_size=72)
    model = Vlm3rForConditionalGeneration.from_config(get_preset("tiny", vision=vision), components=("vision_tower",))
    pixels = torch.rand(5, 3, 98, 98, generator=torch.Generator().manual_seed(0)) * 2 - 1
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.no_grad():
                batched = siglip_features(model.vision_tower, pixels)
                alone = torch.cat([siglip_features(model.vision_tower, pixels[i : i + 1]) for i in range(5)])
            assert torch.equal(alone, batched), threads
    finally:
        torch.set_num_threads(previous)


def test_a_rate_limited_session_equals_the_offline_encoding_of_the_frames_it_kept(encoders, config):
    frames = random_frames(12, seed=2)
    session = LiveSession(encoders, KeyframePolicy(min_interval_frames=3))
    results = push_all(session, frames)
    kept = [r.frame_index for r in results if r.updated]
    assert kept == [0, 3, 6, 9]
    processor = Vlm3rProcessor.from_config(config)
    offline = encoders.encode_frames(processor.preprocess_frames([frames[kept]]))
    live = session.features()
    assert live.frame_indices == tuple(kept)
    for name in FIELDS:
        assert torch.equal(getattr(live.features, name), getattr(offline, name)), name


# Keyframe policy -----------------------------------------------------------------------------------


def expected_retained(u: int, k: int) -> list[int]:
    """The documented rule, computed from scratch: the smallest power-of-two stride s with
    |{v <= u : v % s == 0} | {u}| <= K, and that set."""
    stride = 1
    while len({v for v in range(0, u + 1, stride)} | {u}) > k:
        stride *= 2
    return sorted({v for v in range(0, u + 1, stride)} | {u})


def test_retention_keeps_a_uniform_grid_and_the_latest_update(encoders):
    k = 6
    session = LiveSession(encoders, KeyframePolicy(max_keyframes=k, min_interval_frames=2))
    counts = []
    for i, frame in enumerate(random_frames(60, 16, 16, seed=3)):
        session.push(frame, i / 30)
        u = session.num_updates - 1
        retained_updates = [kf.update_index for kf in session.keyframes]
        assert retained_updates == expected_retained(u, k), (i, u)
        assert [kf.frame_index for kf in session.keyframes] == [2 * v for v in retained_updates]
        counts.append(len(session.keyframes))
    assert session.num_updates == 30 and max(counts) == k
    assert min(counts[2 * k :]) == k // 2 + 1  # once more than K updates were made
    assert session.keyframes[0].frame_index == 0 and session.keyframes[-1].frame_index == 58


def test_rate_limit_in_seconds_and_frames_and_dropped_frames_change_nothing(encoders):
    session = LiveSession(encoders, KeyframePolicy(min_interval_s=0.25, min_interval_frames=2))
    updated = []
    for i, frame in enumerate(random_frames(12, 16, 16, seed=4)):
        before = (session.state.state_tokens.clone(), session.state.pose_memory.clone(), session.memory_bytes())
        result = session.push(frame, i * 0.1)
        updated.append(result.updated)
        if not result.updated:
            assert torch.equal(before[0], session.state.state_tokens)
            assert torch.equal(before[1], session.state.pose_memory) and before[2] == session.memory_bytes()
    # 0.1 s apart: at least 3 frames for 0.25 s (0.3 - 0.0 >= 0.25), which also satisfies 2 frames.
    assert [i for i, u in enumerate(updated) if u] == [0, 3, 6, 9]
    assert session.num_pushed == 12 and session.num_updates == 4
    assert session.duration_s == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (dict(max_keyframes=1), "max_keyframes"),
        (dict(min_interval_s=-1.0), "min_interval_s"),
        (dict(min_interval_s=float("nan")), "min_interval_s"),
        (dict(min_interval_frames=0), "min_interval_frames"),
        (dict(points_per_keyframe=-1), "points_per_keyframe"),
    ],
)
def test_bad_policies_are_rejected(policy, message):
    with pytest.raises(ValueError, match=message):
        KeyframePolicy(**policy)


def test_bad_frames_and_timestamps_are_rejected(encoders):
    session = LiveSession(encoders)
    with pytest.raises(ValueError, match="no keyframe"):
        session.features()
    with pytest.raises(ValueError, match="uint8"):
        session.push(np.zeros((8, 8, 3), np.float32), 0.0)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        session.push(np.zeros((8, 8), np.uint8), 0.0)
    session.push(np.zeros((8, 8, 3), np.uint8), 1.0)
    with pytest.raises(ValueError, match="must not decrease"):
        session.push(np.zeros((8, 8, 3), np.uint8), 0.5)
    assert session.num_pushed == 1


def test_a_push_whose_encoder_fails_leaves_the_session_unchanged(encoders, monkeypatch):
    session = LiveSession(encoders)
    push_all(session, random_frames(3, seed=9))
    before = session.snapshot()

    def broken(*args):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr("vlm3r_core.live.siglip_features", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        session.push(random_frames(1, seed=10)[0], 1.0)
    assert session.snapshot() == before and session.num_pushed == 3


# Memory ----------------------------------------------------------------------------------------------


def test_memory_stays_bounded_over_a_long_stream():
    # `tiny` at 32 px for CUT3R (2x2 patches) and 28 px for SigLIP (2x2): 500 pushes in seconds.
    config = get_preset("tiny", cut3r_image_size=32, vision=dict(get_preset("tiny").vision, image_size=28))
    model = Vlm3rForConditionalGeneration.from_config(config, components=ENCODERS)
    policy = KeyframePolicy(max_keyframes=8)
    session = LiveSession(model, policy)
    bound = LiveSession.memory_bound_bytes(model, policy)
    state_bytes = session.memory_bytes()
    c3, b = config.cut3r, 4
    assert state_bytes == (c3.state_size * c3.dec_embed_dim + c3.pose_memory_size * 2 * c3.dec_embed_dim) * b + 8
    keyframe_bytes = (2 * 2 * config.vision_dim + (1 + 2 * 2) * c3.dec_embed_dim) * b + 7 * 4
    assert bound == state_bytes + 8 * keyframe_bytes

    held = []
    for i, frame in enumerate(random_frames(500, 8, 8, seed=5)):
        session.push(frame, i / 30)
        assert len(session.keyframes) <= 8
        held.append(session.memory_bytes())
        assert held[-1] == state_bytes + len(session.keyframes) * keyframe_bytes
    assert max(held) == bound
    assert max(held[400:]) == max(held[16:100])  # flat after warm-up: the same ceiling, no growth
    assert session.stride == 128 and session.features().features.camera_tokens.shape[1] <= 8
    gaps = np.diff([k.update_index for k in session.keyframes[:-1]])
    assert set(gaps.tolist()) == {128}  # uniform over the whole stream


# Snapshots -------------------------------------------------------------------------------------------


def assert_same_session(a: LiveSession, b: LiveSession) -> None:
    fa, fb = a.features(), b.features()
    for name in FIELDS:
        assert torch.equal(getattr(fa.features, name), getattr(fb.features, name)), name
    assert (fa.timestamps, fa.frame_indices, fa.duration_s) == (fb.timestamps, fb.frame_indices, fb.duration_s)
    assert torch.equal(a.state.state_tokens, b.state.state_tokens)
    assert torch.equal(a.state.pose_memory, b.state.pose_memory)
    assert a.memory_bytes() == b.memory_bytes()
    assert a.snapshot() == b.snapshot()  # the same bytes: tensors, counters, policy


def test_snapshot_restore_continue_equals_an_uninterrupted_session(encoders, tmp_path):
    frames = random_frames(30, seed=6)
    policy = KeyframePolicy(max_keyframes=5, min_interval_frames=2)
    whole = LiveSession(encoders, policy, session_id="cam-1")
    push_all(whole, frames)

    first = LiveSession(encoders, policy, session_id="cam-1")
    push_all(first, frames[:13])
    data = first.snapshot()
    tensors = safetensors.torch.load(data)  # a plain safetensors file
    assert {"state.state_tokens", "state.pose_memory", "keyframes.vision_features", "keyframes.pose"} <= set(tensors)
    restored = LiveSession.restore(encoders, data)
    assert restored.policy == policy and restored.session_id == "cam-1" and restored.stride == first.stride
    push_all(restored, frames[13:], start=13)
    assert_same_session(restored, whole)

    uri = "file://" + str(tmp_path / "sessions" / "cam-1.safetensors")
    first.save(uri)
    again = LiveSession.load(encoders, uri)
    push_all(again, frames[13:], start=13)
    assert_same_session(again, whole)


def test_a_snapshot_restored_in_another_process_continues_identically(encoders, tmp_path):
    frames = random_frames(16, seed=7)
    policy = KeyframePolicy(max_keyframes=4)
    whole = LiveSession(encoders, policy)
    push_all(whole, frames)
    first = LiveSession(encoders, policy)
    push_all(first, frames[:9])
    first.save(str(tmp_path / "session.safetensors"))
    np.save(tmp_path / "rest.npy", frames[9:])
    script = textwrap.dedent(
        f"""
        import numpy as np, safetensors.torch, torch
        torch.set_num_threads(1)
        from vlm3r_core.live import LiveSession
        from vlm3r_core.presets import get_preset
        from vlm3r_core.vlm import Vlm3rForConditionalGeneration
        model = Vlm3rForConditionalGeneration.from_config(get_preset("tiny"), components=("vision_tower", "cut3r"))
        session = LiveSession.load(model, {str(tmp_path / "session.safetensors")!r})
        for i, frame in enumerate(np.load({str(tmp_path / "rest.npy")!r})):
            session.push(frame, (9 + i) / 10.0)
        open({str(tmp_path / "continued.safetensors")!r}, "wb").write(session.snapshot())
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env=env)
    continued = LiveSession.restore(encoders, (tmp_path / "continued.safetensors").read_bytes())
    assert_same_session(continued, whole)


def test_restore_refuses_other_models_and_other_files(encoders):
    session = LiveSession(encoders)
    session.push(random_frames(1)[0], 0.0)
    other = Vlm3rForConditionalGeneration.from_config(get_preset("tiny", cut3r_image_size=64), components=ENCODERS)
    with pytest.raises(ValueError, match="cut3r_image_size"):
        LiveSession.restore(other, session.snapshot())
    with pytest.raises(ValueError, match="not a live-session snapshot"):
        LiveSession.restore(encoders, safetensors.torch.save({"x": torch.zeros(1)}))
    with pytest.raises(ValueError, match="not a safetensors file"):
        LiveSession.restore(encoders, b"\x00" * 4)


def test_point_heads_load_from_cut3r_weights_and_travel_in_snapshots(tmp_path):
    """A model config with point heads loads them from `cut3r_weights`; sessions then keep
    `points_per_keyframe` world points per keyframe, in memory accounting and in snapshots."""
    heads = get_cut3r_config("tiny", enable_point_heads=True)
    torch.manual_seed(3)
    save_cut3r(Cut3r.from_config(heads), str(tmp_path / "cut3r"))
    config = get_preset("tiny", cut3r=heads, cut3r_weights=str(tmp_path / "cut3r"))
    model = Vlm3rForConditionalGeneration.from_config(config, components=ENCODERS)
    policy = KeyframePolicy(max_keyframes=4, points_per_keyframe=100)
    session = LiveSession(model, policy)
    push_all(session, random_frames(6, seed=8))
    assert all(k.points.shape == (100, 3) and k.point_colors.dtype == torch.uint8 for k in session.keyframes)
    assert session.memory_bytes() <= LiveSession.memory_bound_bytes(model, policy)
    restored = LiveSession.restore(model, session.snapshot())
    for a, b in zip(session.keyframes, restored.keyframes, strict=True):
        assert torch.equal(a.points, b.points) and torch.equal(a.point_confidence, b.point_confidence)
    assert_same_session(session, restored)
