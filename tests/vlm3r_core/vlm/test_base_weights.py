from __future__ import annotations

import pytest
import safetensors.torch
import torch

from vlm3r_core.vlm import FramePixels, Vlm3rForConditionalGeneration


def _llava_checkpoint(model: Vlm3rForConditionalGeneration, layout: str) -> dict[str, torch.Tensor]:
    """The base weights of ``model`` as a LLaVA-Video checkpoint stores them, with the unused last
    SigLIP block and pooling head a full SigLIP tower has."""
    vision = {f"vision_model.{k}": v for k, v in model.vision_tower.state_dict().items()}
    extra = model.vision_tower.encoder.layers[-1].state_dict()
    vision.update(
        {
            f"vision_model.encoder.layers.{len(model.vision_tower.encoder.layers)}.{k}": torch.zeros_like(v)
            for k, v in extra.items()
        }
    )
    vision["vision_model.head.probe"] = torch.zeros(1, 1, 4)
    lm = model.language_model.state_dict()
    proj = model.projector
    if layout == "llava-hf":
        out = {f"vision_tower.{k}": v for k, v in vision.items()}
        out.update({f"language_model.{k}": v for k, v in lm.items()})
        out.update({f"multi_modal_projector.{k}": v for k, v in proj.state_dict().items()})
        out["image_newline"] = model.image_newline.detach()
    else:  # original LLaVA (lmms-lab) names
        out = {f"model.vision_tower.vision_tower.{k}": v for k, v in vision.items()}
        out.update({k: v for k, v in lm.items()})  # model.layers..., lm_head.weight
        out.update({"model.mm_projector.0.weight": proj.linear_1.weight, "model.mm_projector.0.bias": proj.linear_1.bias,
                    "model.mm_projector.2.weight": proj.linear_2.weight, "model.mm_projector.2.bias": proj.linear_2.bias})  # fmt: skip
        out["model.image_newline"] = model.image_newline.detach()
    return {k: v.detach().clone().contiguous() for k, v in out.items()}


@pytest.mark.parametrize("layout", ["llava-hf", "llava"])
def test_base_weights_load_from_llava_video_checkpoints(tiny_config, tmp_path, layout):
    source = Vlm3rForConditionalGeneration.from_config(tiny_config)
    tensors = _llava_checkpoint(source, layout)
    half = len(tensors) // 2  # two shards, as large checkpoints come
    keys = sorted(tensors)
    (tmp_path / "ckpt").mkdir()
    safetensors.torch.save_file(
        {k: tensors[k] for k in keys[:half]}, str(tmp_path / "ckpt" / "model-00001-of-00002.safetensors")
    )
    safetensors.torch.save_file(
        {k: tensors[k] for k in keys[half:]}, str(tmp_path / "ckpt" / "model-00002-of-00002.safetensors")
    )
    ref = str(tmp_path / "ckpt")
    model = Vlm3rForConditionalGeneration.from_config(
        tiny_config.replace(seed=1, vision_weights=ref, llm_weights=ref)
    )
    for part in ("vision_tower", "language_model", "projector"):
        for (name, a), (_, b) in zip(
            getattr(source, part).state_dict().items(), getattr(model, part).state_dict().items(), strict=True
        ):
            assert torch.equal(a, b), f"{part}.{name}"
    assert torch.equal(source.image_newline, model.image_newline)
    assert not torch.equal(
        source.fusion.out_proj.weight, model.fusion.out_proj.weight
    )  # fusion is not a base weight


def test_base_weights_fail_clearly(tiny_config, tmp_path):
    source = Vlm3rForConditionalGeneration.from_config(tiny_config)
    tensors = _llava_checkpoint(source, "llava-hf")
    tensors["language_model.model.embed_tokens.weight"] = torch.zeros(7, tiny_config.text_dim)
    safetensors.torch.save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="embed_tokens.weight has shape"):
        Vlm3rForConditionalGeneration.from_config(
            tiny_config.replace(llm_weights=str(tmp_path / "model.safetensors"))
        )
    with pytest.raises(FileNotFoundError, match="not found"):
        Vlm3rForConditionalGeneration.from_config(
            tiny_config.replace(vision_weights=str(tmp_path / "missing"))
        )


def test_vision_features_are_the_penultimate_layer_of_the_full_siglip_tower(tiny_config, tmp_path):
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(0)
    full = SiglipVisionModel(SiglipVisionConfig(**tiny_config.vision)).eval()  # all 3 blocks + head
    state = {
        f"vision_model.{k}": v.contiguous() for k, v in full.state_dict().items()
    }  # google/siglip-* names
    safetensors.torch.save_file(state, str(tmp_path / "model.safetensors"))
    model = Vlm3rForConditionalGeneration.from_config(tiny_config.replace(vision_weights=str(tmp_path)))
    pixels = torch.rand(2, 3, tiny_config.siglip_image_size, tiny_config.siglip_image_size) * 2 - 1
    g = tiny_config.cut3r_image_size
    frames = FramePixels(pixels[None], torch.zeros(1, 2, 3, g, g), torch.ones(1, 2, dtype=torch.bool))
    with torch.no_grad():
        expected = full(pixels, output_hidden_states=True).hidden_states[-2]  # (2, P, Cv)
    torch.testing.assert_close(model.encode_frames(frames).vision_features[0], expected)
