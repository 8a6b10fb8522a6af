"""CUT3R model behaviour: shapes, batching, streaming, masks, resets, heads, sizes."""

from __future__ import annotations

import pytest
import torch
from cut3r_testing import random_frames

from vlm3r_core.geometry import Cut3r, Cut3rOutput, get_cut3r_config


def assert_same_result(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 GEMM reassociation: CPU matmuls round differently for different batch
    sizes (~1e-7), and the reference encoder's float16 rounding of q and k around RoPE can turn
    that into one float16 step of a few attention inputs (~1e-4 on O(1) tokens)."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=5e-4)
    assert (actual - expected).abs().mean() < 1e-5


@pytest.mark.parametrize(("height", "width", "tokens"), [(432, 432, 729), (384, 512, 768)])
def test_token_shapes_at_released_resolutions(tiny_model, height, width, tokens):
    out = tiny_model.encode_video(random_frames(1, 2, height, width))
    assert isinstance(out, Cut3rOutput)
    c = tiny_model.config.dec_embed_dim
    assert out.patch_tokens.shape == (1, 2, tokens, c)
    assert out.camera_tokens.shape == (1, 2, 1, c)
    assert out.poses.shape == (1, 2, 7)
    assert out.pointmaps is None  # point heads are skipped on the token path
    assert out.patch_tokens.dtype == torch.float32 and not out.patch_tokens.requires_grad
    assert torch.isfinite(out.patch_tokens).all() and torch.isfinite(out.camera_tokens).all()


def test_tokens_depend_on_the_past_frames(tiny_model):
    """The state carries information: frame 1's tokens change when frame 0 changes."""
    a = random_frames(1, 2, seed=1)
    b = a.clone()
    b[:, 0] = random_frames(1, 1, seed=2)[:, 0]
    out_a, out_b = tiny_model.encode_video(a), tiny_model.encode_video(b)
    assert (out_a.patch_tokens[:, 1] - out_b.patch_tokens[:, 1]).abs().max() > 1e-3
    assert (out_a.camera_tokens[:, 1] - out_b.camera_tokens[:, 1]).abs().max() > 1e-3


def test_batched_videos_match_one_video_at_a_time(tiny_model):
    frames = random_frames(3, 3, seed=3)
    batched = tiny_model.encode_video(frames)
    for b in range(3):
        alone = tiny_model.encode_video(frames[b : b + 1])
        assert_same_result(batched.patch_tokens[b], alone.patch_tokens[0])
        assert_same_result(batched.camera_tokens[b], alone.camera_tokens[0])
        assert_same_result(batched.poses[b], alone.poses[0])


def test_streaming_steps_equal_whole_video(tiny_model):
    frames = random_frames(2, 4, seed=4)
    whole = tiny_model.encode_video(frames)
    state = tiny_model.init_state(2)
    for t in range(4):
        out, state = tiny_model.step(frames[:, t], state)
        torch.testing.assert_close(out.patch_tokens, whole.patch_tokens[:, t], rtol=0, atol=0)
        torch.testing.assert_close(out.camera_tokens, whole.camera_tokens[:, t], rtol=0, atol=0)
    assert state.frames_seen.tolist() == [4, 4]


def test_padding_mask_gives_each_video_its_own_result(tiny_model):
    """Videos of 4 and 2 frames in one batch: the padded one equals running its 2 frames alone."""
    frames = random_frames(2, 4, seed=5)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    out = tiny_model.encode_video(frames, mask)
    short = tiny_model.encode_video(frames[1:, :2])
    long = tiny_model.encode_video(frames[:1])
    assert_same_result(out.patch_tokens[1, :2], short.patch_tokens[0])
    assert_same_result(out.patch_tokens[0], long.patch_tokens[0])
    assert out.patch_tokens[1, 2:].abs().max() == 0 and out.camera_tokens[1, 2:].abs().max() == 0
    assert out.poses[1, 2:].abs().max() == 0
    assert out.frame_mask.tolist() == mask.tolist()


@pytest.mark.parametrize("mask", [[False, True, True], [True, False, True]])
def test_masked_frame_does_not_update_the_state(tiny_model, mask):
    """Skipping a frame (first or middle) equals a video without it, including the camera query of
    the first real frame (the learned pose token)."""
    frames = random_frames(1, 3, seed=6)
    keep = torch.tensor(mask)
    out = tiny_model.encode_video(frames, keep[None])
    without = tiny_model.encode_video(frames[:, keep])
    assert_same_result(out.patch_tokens[0, keep], without.patch_tokens[0])
    assert_same_result(out.camera_tokens[0, keep], without.camera_tokens[0])


def test_step_with_no_frames_leaves_state_unchanged(tiny_model):
    state = tiny_model.init_state(2)
    _, state = tiny_model.step(random_frames(2, 1, seed=7)[:, 0], state)
    out, after = tiny_model.step(random_frames(2, 1, seed=8)[:, 0], state, mask=torch.tensor([False, False]))
    assert out.patch_tokens.abs().max() == 0
    assert torch.equal(after.state_tokens, state.state_tokens) and torch.equal(
        after.pose_memory, state.pose_memory
    )
    assert after.frames_seen.tolist() == [1, 1]


def test_reset_restores_the_initial_state_after_the_frame(tiny_model):
    frames = random_frames(2, 2, seed=9)
    initial = tiny_model.init_state(2)
    out, state = tiny_model.step(frames[:, 0], initial, reset=torch.tensor([True, False]))
    assert torch.equal(state.state_tokens[0], initial.state_tokens[0])
    assert torch.equal(state.pose_memory[0], initial.pose_memory[0])
    assert not torch.equal(state.state_tokens[1], initial.state_tokens[1])
    plain, _ = tiny_model.step(frames[:, 0], initial)  # reset acts after the frame is predicted
    torch.testing.assert_close(out.patch_tokens, plain.patch_tokens, rtol=0, atol=0)


def test_pose_head_is_optional_and_does_not_change_tokens(tiny_model):
    no_pose = Cut3r.from_config(get_cut3r_config("tiny", enable_pose_head=False))
    weights = {k: v for k, v in tiny_model.state_dict().items() if not k.startswith("downstream_head.")}
    no_pose.load_state_dict(weights, strict=True)
    frames = random_frames(1, 2, seed=10)
    out, ref = no_pose.encode_video(frames), tiny_model.encode_video(frames)
    assert out.poses is None
    torch.testing.assert_close(out.patch_tokens, ref.patch_tokens, rtol=0, atol=0)


def test_point_heads_give_full_resolution_maps_and_valid_poses(tiny_full_model):
    out = tiny_full_model.encode_video(random_frames(2, 2, 32, 48, seed=11))
    pm = out.pointmaps
    assert pm.points_in_camera.shape == (2, 2, 32, 48, 3) and pm.points_in_world.shape == (2, 2, 32, 48, 3)
    assert pm.confidence_in_camera.shape == (2, 2, 32, 48) and (pm.confidence_in_world >= 1).all()
    assert pm.rgb.shape == (2, 2, 32, 48, 3) and pm.rgb.abs().max() <= 1
    quat = out.poses[..., 3:]
    torch.testing.assert_close(quat.norm(dim=-1), torch.ones(2, 2))
    assert (quat[..., 0] >= 0).all()


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (torch.zeros(1, 2, 3, 32, 48, dtype=torch.uint8), "float"),
        (torch.zeros(1, 2, 3, 30, 48), "multiples of 16"),
        (torch.full((1, 2, 3, 32, 48), 255.0), r"\[-1, 1\]"),
        (torch.zeros(2, 3, 32, 48), r"\(B, T, 3, H, W\)"),
    ],
)
def test_bad_frames_are_rejected_with_the_reason(tiny_model, frames, message):
    with pytest.raises(ValueError, match=message):
        tiny_model.encode_video(frames)


def test_bad_mask_and_state_are_rejected(tiny_model):
    with pytest.raises(ValueError, match="mask"):
        tiny_model.encode_video(random_frames(2, 2), mask=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="state holds 1 videos"):
        tiny_model.step(random_frames(2, 1)[:, 0], tiny_model.init_state(1))


def _count(config) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Cut3r(config).parameters())


def test_released_parameter_counts_match_the_reference():
    """Figures counted on the official model built from the released constructor: 793,307,858 in
    all, of which the ray-map branch (26,769,408) and masked_img_token (1,024) are not ours."""
    unused = 26_769_408 + 1_024
    assert _count(get_cut3r_config("cut3r-512-dpt", enable_point_heads=True)) == 793_307_858 - unused
    assert _count(get_cut3r_config("cut3r-512-dpt", enable_pose_head=False)) == 684_648_192  # token path
    assert _count(get_cut3r_config("cut3r-512-dpt")) == 684_648_192 + 2_383_879  # + pose head
    assert _count(get_cut3r_config("cut3r-224-linear", enable_point_heads=True)) == 748_443_655 - unused


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="head_type"):
        get_cut3r_config("tiny", head_type="conv")
    with pytest.raises(ValueError, match="multiple of 4"):
        get_cut3r_config("tiny", dec_num_heads=8)  # 48 / 8 = 6
    with pytest.raises(ValueError, match="unknown CUT3R preset"):
        get_cut3r_config("cut3r-huge")
