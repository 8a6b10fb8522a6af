from __future__ import annotations

import pytest
import torch

from vlm3r_core import storage
from vlm3r_core.vlm import VideoFeatures, Vlm3rForConditionalGeneration, Vlm3rProcessor


@pytest.fixture(scope="module")
def trained(tiny_config, processor, messages):
    """A tiny model with LoRA after one optimizer step (so every trainable part moved)."""
    model = Vlm3rForConditionalGeneration.from_config(
        tiny_config.replace(num_frames=8, fusion_variant="gated")
    )
    model.apply_lora(r=4, alpha=8)
    g = torch.Generator().manual_seed(0)
    features = VideoFeatures(
        torch.randn(2, 3, 49, 32, generator=g), torch.randn(2, 3, 1, 48, generator=g),
        torch.randn(2, 3, 49, 48, generator=g), torch.tensor([[True, True, True], [True, True, False]]),
    )  # fmt: skip
    batch = processor.build_batch(messages, ["3", "B"])
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    model.train()
    model(batch.input_ids, batch.attention_mask, batch.labels, features=features).loss.backward()
    optimizer.step()
    model.eval()
    return model, features, processor.build_batch(messages)


def _logits(model, features, batch):
    with torch.no_grad():
        return model(batch.input_ids, batch.attention_mask, features=features).logits


def test_save_load_round_trips_exactly(trained, tmp_path):
    model, features, batch = trained
    model.save_pretrained(str(tmp_path / "m"))
    assert {p.rsplit("/", 1)[-1] for p in storage.list_files(str(tmp_path / "m"))} >= {
        "config.json", "model.safetensors", "adapter_model.safetensors", "adapter_config.json", "tokenizer.json",
    }  # fmt: skip
    loaded = Vlm3rForConditionalGeneration.from_pretrained(str(tmp_path / "m"))
    assert loaded.config == model.config and loaded.config.num_frames == 8 and loaded.config.lora_r == 4
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert name == name_b and torch.equal(a, b), name
    assert torch.equal(_logits(model, features, batch), _logits(loaded, features, batch))
    processor = Vlm3rProcessor.from_pretrained(str(tmp_path / "m"))
    assert processor.config.prompt == model.config.prompt
    assert (
        processor.build_batch(["<image>\nHow many?"]).input_ids.tolist()
        == Vlm3rProcessor.from_config(model.config).build_batch(["<image>\nHow many?"]).input_ids.tolist()
    )


def test_save_load_through_s3(trained, moto_s3):
    model, features, batch = trained
    uri = f"{moto_s3}/models/tiny"
    model.save_pretrained(uri)
    loaded = Vlm3rForConditionalGeneration.from_pretrained(uri)
    assert torch.equal(_logits(model, features, batch), _logits(loaded, features, batch))


def test_merge_and_unload_keeps_outputs_and_saves_the_merged_llm(trained, tmp_path):
    model, features, batch = trained
    before = _logits(model, features, batch)
    merged = Vlm3rForConditionalGeneration.from_pretrained(_save(model, tmp_path / "a"))
    merged.merge_and_unload()
    torch.testing.assert_close(_logits(merged, features, batch), before, atol=1e-5, rtol=1e-5)
    reloaded = Vlm3rForConditionalGeneration.from_pretrained(_save(merged, tmp_path / "b"))
    assert torch.equal(_logits(reloaded, features, batch), _logits(merged, features, batch))
    with pytest.raises(ValueError, match="no LoRA"):
        merged.merge_and_unload()


def test_from_pretrained_rejects_other_folders(tmp_path):
    storage.write_json(str(tmp_path / "config.json"), {"model_type": "qwen2"})
    with pytest.raises(ValueError, match="not a VLM-3R model folder"):
        Vlm3rForConditionalGeneration.from_pretrained(str(tmp_path))


def _save(model, path) -> str:
    model.save_pretrained(str(path))
    return str(path)
