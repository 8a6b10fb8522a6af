"""CUT3R checkpoints: the official .pth layout, our safetensors folder, key reporting, safety."""

from __future__ import annotations

import logging

import pytest
import torch
from cut3r_testing import TINY_CONSTRUCTOR, random_frames, write_official_checkpoint

from vlm3r_core import storage
from vlm3r_core.geometry import Cut3r, get_cut3r_config
from vlm3r_core.geometry.checkpoint import (
    Cut3rCheckpointError,
    config_from_constructor,
    load_cut3r,
    parse_constructor,
    save_cut3r,
)


def _assert_same_weights(a: Cut3r, b: Cut3r) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def test_official_pth_to_safetensors_and_back_is_bitwise(tmp_path, monkeypatch, tiny_full_model, caplog):
    path = tmp_path / "cut3r_tiny_dpt.pth"
    official = write_official_checkpoint(path, tiny_full_model, TINY_CONSTRUCTOR, monkeypatch)

    with caplog.at_level(logging.INFO, logger="vlm3r_core.geometry.checkpoint"):
        full = load_cut3r(str(path), enable_point_heads=True)
    assert full.config == get_cut3r_config("tiny", enable_point_heads=True)
    _assert_same_weights(full, tiny_full_model)
    assert "skipped 30 unused" in caplog.text and "enc_blocks_ray_map" in caplog.text

    # DPT aliases and tokens-only loading: no point-head weights are kept.
    tokens_only = load_cut3r(str(path))
    assert not any(k.startswith("downstream_head.dpt") for k in tokens_only.state_dict())
    assert torch.equal(
        tokens_only.state_dict()["enc_blocks.1.attn.qkv.weight"], official["enc_blocks.1.attn.qkv.weight"]
    )

    folder = tmp_path / "ours"
    save_cut3r(full, str(folder))
    again = load_cut3r(str(folder))  # config.json keeps enable_point_heads=True
    _assert_same_weights(again, full)
    frames = random_frames(1, 2, seed=1)
    a, b = full.encode_video(frames), again.encode_video(frames)
    assert torch.equal(a.patch_tokens, b.patch_tokens) and torch.equal(a.pointmaps.rgb, b.pointmaps.rgb)


def test_linear_head_layout_loads(tmp_path, monkeypatch):
    """The 224-linear layout: `downstream_head.proj` / `cross_proj` / `rgb_proj` instead of DPTs."""
    torch.manual_seed(2)
    linear = Cut3r.from_config(get_cut3r_config("tiny", head_type="linear", enable_point_heads=True))
    constructor = TINY_CONSTRUCTOR.replace("head_type='dpt'", "head_type='linear'")
    write_official_checkpoint(tmp_path / "linear.pth", linear, constructor, monkeypatch)
    loaded = load_cut3r(str(tmp_path / "linear.pth"), enable_point_heads=True)
    _assert_same_weights(loaded, linear)
    assert loaded.encode_video(random_frames(1, 2)).pointmaps.points_in_world.shape == (1, 2, 32, 48, 3)


def test_the_tiny_official_model_matches_our_tiny_preset():
    assert config_from_constructor(
        TINY_CONSTRUCTOR, dpt_layer_dims=(8, 16, 32, 64), dpt_feature_dim=16
    ) == get_cut3r_config("tiny")


def test_released_constructor_strings_give_the_presets():
    released = (
        "ARCroco3DStereo(ARCroco3DStereoConfig(freeze='encoder', state_size=768, state_pe='2d', pos_embed='RoPE100', "
        "rgb_head=True, pose_head=True, patch_embed_cls='ManyAR_PatchEmbed', img_size=(512, 512), head_type='dpt', "
        "output_mode='pts3d+pose', depth_mode=('exp', -inf, inf), conf_mode=('exp', 1, inf), pose_mode=('exp', -inf, inf), "
        "enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12, "
        "landscape_only=False))"
    )
    assert config_from_constructor(released) == get_cut3r_config("cut3r-512-dpt")
    linear = released.replace("head_type='dpt'", "head_type='linear'").replace(
        "patch_embed_cls='ManyAR_PatchEmbed', ", "").replace(", landscape_only=False", "")  # fmt: skip
    assert config_from_constructor(linear) == get_cut3r_config("cut3r-224-linear")


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('echo pwned')",
        "ARCroco3DStereo(ARCroco3DStereoConfig(state_size=__import__('os').getpid()))",
        "ARCroco3DStereo(ARCroco3DStereoConfig(state_size=768), evil=1)",
    ],
)
def test_constructor_strings_are_parsed_never_run(text):
    with pytest.raises(Cut3rCheckpointError, match="cannot parse"):
        parse_constructor(text)


def test_unsupported_variants_are_named():
    with pytest.raises(Cut3rCheckpointError, match="state_pe='1d'"):
        config_from_constructor(TINY_CONSTRUCTOR.replace("state_pe='2d'", "state_pe='1d'"))


def test_missing_and_unexpected_keys_are_reported(tmp_path, monkeypatch, tiny_full_model):
    path = tmp_path / "broken.pth"
    state = write_official_checkpoint(path, tiny_full_model, TINY_CONSTRUCTOR, monkeypatch)
    del state["dec_blocks.1.cross_attn.projk.weight"]
    state["dec_blocks.7.mlp.fc1.weight"] = torch.zeros(3)
    state["enc_norm.weight"] = torch.ones(7)
    from cut3r_testing import make_official_args

    torch.save({"model": state, "args": make_official_args(monkeypatch, TINY_CONSTRUCTOR)}, path)
    with pytest.raises(Cut3rCheckpointError) as error:
        load_cut3r(str(path))
    message = str(error.value)
    assert "1 missing key(s): dec_blocks.1.cross_attn.projk.weight" in message
    assert "1 unexpected key(s): dec_blocks.7.mlp.fc1.weight" in message
    assert "enc_norm.weight: (7,) vs (64,)" in message


def test_a_token_path_folder_cannot_provide_point_heads(tmp_path, tiny_model):
    save_cut3r(tiny_model, str(tmp_path / "tokens"))
    with pytest.raises(Cut3rCheckpointError, match="missing key"):
        load_cut3r(str(tmp_path / "tokens"), enable_point_heads=True)


def test_pickled_code_in_a_checkpoint_is_never_run(tmp_path, monkeypatch):
    """A global the safe loader does not know becomes an inert record: its code does not run."""
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": {"w": torch.zeros(1)}, "args": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(Cut3rCheckpointError, match="constructor string"):
        load_cut3r(str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such CUT3R checkpoint"):
        load_cut3r(str(tmp_path / "nope.pth"))


def test_save_and_load_through_s3(moto_s3, tmp_path, monkeypatch, tiny_full_model):
    path = tmp_path / "official.pth"
    write_official_checkpoint(path, tiny_full_model, TINY_CONSTRUCTOR, monkeypatch)
    storage.write_bytes(f"{moto_s3}/ckpt/official.pth", path.read_bytes())
    from_s3 = load_cut3r(f"{moto_s3}/ckpt/official.pth")
    save_cut3r(from_s3, f"{moto_s3}/cut3r-tiny")
    again = load_cut3r(f"{moto_s3}/cut3r-tiny")
    _assert_same_weights(again, from_s3)
    assert storage.exists(f"{moto_s3}/cut3r-tiny/model.safetensors")
