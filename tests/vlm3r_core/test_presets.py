from __future__ import annotations

import pytest

from vlm3r_core.presets import PRESETS, get_preset
from vlm3r_core.vlm import Vlm3rConfig, Vlm3rForConditionalGeneration, Vlm3rProcessor


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    config = get_preset(name)
    device = "cpu" if name == "tiny" else "meta"  # 7B: shapes only
    model = Vlm3rForConditionalGeneration.from_config(config, device=device)
    assert next(model.parameters()).dtype == config.torch_dtype
    assert model.image_newline.shape == (config.text_dim,)
    assert not any(p.requires_grad for p in model.vision_tower.parameters())
    assert not any(p.requires_grad for p in model.cut3r.parameters())
    assert Vlm3rConfig.from_dict(config.to_dict()) == config
    if name == "tiny":
        assert config.tokens_per_frame == 20 and config.num_frames == 32
        Vlm3rProcessor.from_config(config)  # offline tokenizer, ids consistent with the config


def test_vlm3r_7b_has_the_published_sizes():
    config = get_preset("vlm3r-7b")
    assert (config.vision_grid, config.pooled_grid, config.tokens_per_frame) == (27, 14, 210)
    assert config.tokens_per_frame * config.num_frames == 6720
    model = Vlm3rForConditionalGeneration.from_config(config, device="meta")
    assert _count(model.fusion) == 9_747_456  # about 9.75 M (reference variant)
    assert _count(model.projector) == 16_980_992  # about 17.0 M
    assert model.language_model.model.embed_tokens.weight.shape == (152064, 3584)
    assert len(model.vision_tower.encoder.layers) == 26  # 27 blocks, penultimate features
    assert model.cut3r.config.dec_embed_dim == 768 and model.fusion.num_heads == 18
    model.apply_lora()
    lora = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    assert lora == 322_961_408  # about 323 M at r=128 on q,k,v,o,gate,up,down of 28 layers
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n
        for n, _ in model.named_parameters()
        if "lora_" in n or n.startswith(("fusion.", "projector.", "image_newline"))
    }


def test_get_preset_overrides_and_rejects_unknown_names():
    assert get_preset("tiny", num_frames=8, fusion_variant="gated").num_frames == 8
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("vlm3r-70b")
    with pytest.raises(ValueError, match="fusion_variant"):
        get_preset("tiny", fusion_variant="concat")
    with pytest.raises(ValueError, match="fusion_num_heads"):
        get_preset("tiny", fusion_num_heads=5)
