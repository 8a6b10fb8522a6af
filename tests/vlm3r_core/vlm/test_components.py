"""Building only some components: the same weights as a whole build, clear errors, no 7B LLM."""

from __future__ import annotations

import pytest
import torch

from vlm3r_core.presets import get_preset
from vlm3r_core.vlm import COMPONENTS, VideoFeatures, Vlm3rForConditionalGeneration

ENCODERS = ("vision_tower", "cut3r")
TRAINED = ("fusion", "projector", "image_newline", "language_model")


@pytest.fixture(scope="module")
def whole(tiny_config):
    return Vlm3rForConditionalGeneration.from_config(tiny_config)


def _state(model, component: str) -> dict[str, torch.Tensor]:
    part = getattr(model, component)
    return {"": part} if isinstance(part, torch.Tensor) else part.state_dict()


@pytest.mark.parametrize("components", [ENCODERS, ("cut3r",), TRAINED, ("image_newline",)])
def test_a_partial_build_has_the_whole_builds_weights(tiny_config, whole, components):
    part = Vlm3rForConditionalGeneration.from_config(tiny_config, components=components)
    assert part.components == components
    for name in COMPONENTS:
        if name not in components:
            assert getattr(part, name) is None
            continue
        expected, got = _state(whole, name), _state(part, name)
        assert expected.keys() == got.keys()
        assert all(torch.equal(expected[k], got[k]) for k in expected), name


def test_a_missing_component_is_named_in_the_error(tiny_config, processor, messages, videos):
    encoders = Vlm3rForConditionalGeneration.from_config(tiny_config, components=ENCODERS)
    language = Vlm3rForConditionalGeneration.from_config(tiny_config, components=TRAINED)
    pixels = processor.preprocess_frames(videos)
    batch = processor.build_batch(messages)
    features = encoders.encode_frames(pixels)  # the encoder share works on its own
    assert features.vision_features.shape[:2] == (2, 3)
    with pytest.raises(
        ValueError, match="forward / generate needs the fusion, projector, image_newline, language_model"
    ):
        encoders(batch.input_ids, batch.attention_mask, features=features)
    with pytest.raises(ValueError, match="with pixels= needs the vision_tower, cut3r component"):
        language(batch.input_ids, batch.attention_mask, pixels=pixels)
    with pytest.raises(ValueError, match="encode_frames needs the cut3r component"):
        Vlm3rForConditionalGeneration.from_config(tiny_config, components=("vision_tower",)).encode_frames(
            pixels
        )
    with pytest.raises(ValueError, match="components must be"):
        Vlm3rForConditionalGeneration.from_config(tiny_config, components=("vision",))
    assert language(batch.input_ids, batch.attention_mask, features=features).logits.shape[0] == 2


def test_a_model_without_encoders_saves_and_loads_whole(tiny_config, whole, tmp_path):
    language = Vlm3rForConditionalGeneration.from_config(tiny_config, components=TRAINED)
    with torch.no_grad():
        language.projector.linear_1.weight.add_(1.0)  # "trained"
    language.save_pretrained(str(tmp_path / "m"))
    loaded = Vlm3rForConditionalGeneration.from_pretrained(str(tmp_path / "m"))
    assert loaded.components == COMPONENTS
    assert torch.equal(loaded.projector.linear_1.weight, language.projector.linear_1.weight)
    for name in ENCODERS:  # rebuilt from the config: the whole build's seeded weights
        expected, got = _state(whole, name), _state(loaded, name)
        assert all(torch.equal(expected[k], got[k]) for k in expected), name
    encoders = Vlm3rForConditionalGeneration.from_pretrained(str(tmp_path / "m"), components=ENCODERS)
    assert encoders.language_model is None and encoders.projector is None
    with pytest.raises(
        ValueError, match="save_pretrained needs the fusion, projector, image_newline, language_model"
    ):
        encoders.save_pretrained(str(tmp_path / "e"))


def test_vlm3r_7b_encoders_alone_hold_no_language_model():
    model = Vlm3rForConditionalGeneration.from_config(
        get_preset("vlm3r-7b"), device="meta", components=ENCODERS
    )
    assert model.language_model is None and model.fusion is None
    assert not any(n.startswith("language_model.") for n, _ in model.named_parameters())
    total = sum(p.numel() for p in model.parameters())
    assert 0 < total < 1_500_000_000  # SigLIP (0.40 B) + CUT3R (0.69 B), not the 7.6 B LLM


def test_features_match_between_encoder_and_whole_builds(tiny_config, whole, processor, videos):
    encoders = Vlm3rForConditionalGeneration.from_config(tiny_config, components=ENCODERS)
    pixels = processor.preprocess_frames(videos)
    a, b = whole.encode_frames(pixels), encoders.encode_frames(pixels)
    assert isinstance(b, VideoFeatures)
    assert torch.equal(a.vision_features, b.vision_features) and torch.equal(a.patch_tokens, b.patch_tokens)
