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


# The official evaluation's prompt for a numeric and a multiple-choice question, and its token ids with the
# tiny preset's tokenizer (ChatML, the video placeholder <image> = id 3).
OFFICIAL_EVAL = {
    "numeric": (
        ("How many chair(s) are in this room?", ()),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        "These are frames of a video.\nHow many chair(s) are in this room?\n"
        "Please answer the question using a single word or phrase.<|im_end|>\n<|im_start|>assistant\n",
        [1, 947, 202, 373, 369, 272, 834, 827, 17, 2, 202, 1, 887, 202, 3, 202, 831, 369, 814, 282, 272, 372, 17,
         202, 505, 567, 487, 11, 86, 12, 369, 299, 420, 397, 34, 202, 832, 829, 262, 939, 917, 272, 906, 903, 294,
         955, 17, 2, 202, 1, 907, 202],
    ),
    "mc": (
        ("Which of these objects (chair, lamp) is the closest to the bed?", ("A. chair", "B. lamp")),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\n"
        "These are frames of a video.\nWhich of these objects (chair, lamp) is the closest to the bed?\n"
        "Options:\nA. chair\nB. lamp\nAnswer with the option's letter from the given choices directly."
        "<|im_end|>\n<|im_start|>assistant\n",
        [1, 947, 202, 373, 369, 272, 834, 827, 17, 2, 202, 1, 887, 202, 3, 202, 831, 369, 814, 282, 272, 372, 17,
         202, 572, 282, 539, 574, 306, 476, 15, 786, 12, 300, 262, 395, 292, 262, 771, 34, 202, 275, 29, 202, 36,
         17, 487, 202, 37, 17, 786, 202, 925, 951, 262, 897, 490, 910, 416, 262, 950, 957, 928, 17, 2, 202, 1, 907,
         202],
    ),
}  # fmt: skip


def _official_tokenization(tokenizer, prompt: str, image_id: int) -> list[int]:
    """How the official evaluation tokenizes (llava.mm_utils.tokenizer_image_token, in words): each piece
    between <image> placeholders on its own, the placeholder id between them."""
    pieces = [tokenizer(piece, add_special_tokens=False).input_ids for piece in prompt.split("<image>")]
    ids = list(pieces[0])
    for piece in pieces[1:]:
        ids += [image_id, *piece]
    return ids


@pytest.mark.parametrize("kind", sorted(OFFICIAL_EVAL))
def test_a_converted_release_renders_the_official_evaluation_prompt_exactly(released, tmp_path, kind):
    from vlm3r_core.inference import Question, VideoContext, generation_inputs
    from vlm3r_core.prompting import render_chatml
    from vlm3r_core.vlm import Vlm3rProcessor

    _, folder = released
    out = tmp_path / "converted"
    assert main(["--lora", str(folder), "--out", str(out), "--preset", "tiny"]) == 0
    model = Vlm3rForConditionalGeneration.from_pretrained(str(out))
    processor = Vlm3rProcessor.from_pretrained(str(out))
    assert model.config.prompt.form == "official-eval"
    (question, options), text, ids = OFFICIAL_EVAL[kind]
    g = torch.Generator().manual_seed(0)
    video = VideoContext(VideoFeatures(
        torch.randn(1, 2, 49, 32, generator=g), torch.randn(1, 2, 1, 48, generator=g),
        torch.randn(1, 2, 49, 48, generator=g), torch.ones(1, 2, dtype=torch.bool),
    ), timestamps=(0.0, 3.0), duration_s=6.5)  # fmt: skip
    inputs = generation_inputs(model, processor, [Question(question, options)], [video])
    assert inputs.text.input_ids[0].tolist() == ids
    assert processor.tokenizer.decode(ids) == text
    user = text.split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert render_chatml(user)[0] == text
    assert _official_tokenization(processor.tokenizer, text, model.config.image_token_id) == ids


def test_the_converter_stores_the_prompt_form_asked_for_and_writes_a_model_card(released, tmp_path):
    import yaml

    _, folder = released
    out = tmp_path / "converted"
    assert main(["--lora", str(folder), "--out", str(out), "--preset", "tiny", "--prompt-form", "official-train"]) == 0
    loaded = Vlm3rForConditionalGeneration.from_pretrained(str(out))
    assert loaded.config.prompt.form == "official-train"
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---\n")[1])
    assert front["pipeline_tag"] == "video-text-to-text" and "lora" in front["tags"]
    assert "Prompt form: `official-train`" in card and ".Please answer the following questions" in card
    assert f"released VLM-3R weights in `{folder}`" in card
    assert json.loads((out / "provenance.json").read_text())["prompt_form"] == "official-train"
