from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from peft import get_peft_model_state_dict

from vlm3r_core.vlm import VideoFeatures, Vlm3rForConditionalGeneration
from vlm3r_core.vlm.convert import main


def _release(model: Vlm3rForConditionalGeneration, folder) -> None:
    """Writes ``model``'s trainables the way the VLM-3R release stores them (LLaVA names)."""
    folder.mkdir()
    adapter = get_peft_model_state_dict(model.language_model)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in adapter.items()}, str(folder / "adapter_model.safetensors")
    )
    lora = model.language_model.peft_config["default"]
    (folder / "adapter_config.json").write_text(
        json.dumps({"r": lora.r, "lora_alpha": lora.lora_alpha, "lora_dropout": lora.lora_dropout, "bias": "none",
                    "peft_type": "LORA", "target_modules": sorted(lora.target_modules)})
    )  # fmt: skip
    llava = {f"base_model.model.model.fusion_block.{k}": v for k, v in model.fusion.state_dict().items()}
    llava["base_model.model.model.mm_projector.0.weight"] = model.projector.linear_1.weight.detach()
    llava["base_model.model.model.mm_projector.0.bias"] = model.projector.linear_1.bias.detach()
    llava["base_model.model.model.mm_projector.2.weight"] = model.projector.linear_2.weight.detach()
    llava["base_model.model.model.mm_projector.2.bias"] = model.projector.linear_2.bias.detach()
    llava["base_model.model.model.image_newline"] = model.image_newline.detach()
    torch.save(llava, folder / "non_lora_trainables.bin")


@pytest.fixture(scope="module")
def released(tiny_config, tmp_path_factory):
    """A tiny model whose LoRA, fusion and projector all differ from the seeded init."""
    model = Vlm3rForConditionalGeneration.from_config(tiny_config)
    model.apply_lora(r=4, alpha=8)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("release") / "vlm3r-lora"
    _release(model, folder)
    return model, folder


def test_converted_release_loads_and_matches(released, processor, messages, tmp_path):
    model, folder = released
    out = tmp_path / "converted"
    assert main(["--lora", str(folder), "--out", str(out), "--preset", "tiny"]) == 0
    loaded = Vlm3rForConditionalGeneration.from_pretrained(str(out))
    assert (loaded.config.lora_r, loaded.config.lora_alpha, loaded.config.fusion_variant) == (
        4,
        8,
        "reference",
    )
    g = torch.Generator().manual_seed(0)
    features = VideoFeatures(
        torch.randn(2, 2, 49, 32, generator=g), torch.randn(2, 2, 1, 48, generator=g),
        torch.randn(2, 2, 49, 48, generator=g), torch.tensor([[True, True], [True, False]]),
    )  # fmt: skip
    batch = processor.build_batch(messages)
    with torch.no_grad():
        expected = model(batch.input_ids, batch.attention_mask, features=features).logits
        got = loaded(batch.input_ids, batch.attention_mask, features=features).logits
    assert torch.equal(expected, got)


def test_convert_rejects_unknown_tensors(released, tmp_path):
    model, folder = released
    bad = torch.load(folder / "non_lora_trainables.bin", weights_only=True)
    bad["base_model.model.model.vision_resampler.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "non_lora_trainables.bin")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    with pytest.raises(ValueError, match="no place for 'base_model.model.model.vision_resampler.weight'"):
        main(["--lora", str(tmp_path), "--out", str(tmp_path / "out"), "--preset", "tiny"])
