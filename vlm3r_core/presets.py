"""Model presets: every size of the VLM in one dict, each under its source.

``get_preset(name, **overrides)`` returns the ``Vlm3rConfig`` of a preset with fields replaced,
e.g. ``get_preset("vlm3r-7b", cut3r_weights="s3://models/cut3r_512_dpt_4_64.pth")`` or
``get_preset("tiny", num_frames=8, fusion_variant="gated")``.
"""

from __future__ import annotations

from vlm3r_core.geometry.config import get_cut3r_config
from vlm3r_core.vlm.config import Vlm3rConfig

__all__ = ["PRESETS", "get_preset"]

PRESETS: dict[str, Vlm3rConfig] = {
    # Every component at toy size, random (seeded) weights, the offline tokenizer shipped in
    # vlm3r_core/vlm/tiny_tokenizer/. Same structure as the 7B model: SigLIP patch 14 at 98 px gives
    # an odd 7x7 grid (like 27x27) pooled to ceil(7/2) = 4 rows of 4 + newline = 20 tokens/frame;
    # CUT3R patch 16 at 112 px gives 7x7 patch tokens plus a camera token.
    "tiny": Vlm3rConfig(
        name="tiny",
        vision=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
            image_size=98, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
        ),
        text=dict(
            vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
            rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
            eos_token_id=2, pad_token_id=0,
            initializer_range=0.1,  # lets a LoRA-only run move the frozen random LM head's logits
        ),
        cut3r=get_cut3r_config("tiny"),
        cut3r_image_size=112,
        image_token_id=3,
        fusion_num_heads=2,
        lora_r=8,
        lora_alpha=16,
    ),
    # VLM-3R (arXiv 2505.20279; github.com/VITA-Group/VLM-3R, scripts/VLM_3R/train_vsibench.sh):
    # SigLIP google/siglip-so400m-patch14-384 (27 blocks, penultimate features, 27x27x1152),
    # LLaVA-Video-7B-Qwen2 (Qwen2-7B: 3584 x 28 layers, 28 heads, 4 KV heads) in Hugging Face
    # format (llava-hf/LLaVA-Video-7B-Qwen2-hf, which also holds the tuned SigLIP, the projector
    # init and the newline), CUT3R cut3r_512_dpt_4_64.pth at 432x432 (27x27 patches, 768 wide),
    # Qwen2 ids: <|endoftext|> 151643 (pad), <|im_end|> 151645, <image> 151646;
    # fusion 18 heads at 1152, LoRA r=128 alpha=256 dropout 0.05, 32 frames, bf16.
    "vlm3r-7b": Vlm3rConfig(
        name="vlm3r-7b",
        vision=dict(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
            image_size=384, patch_size=14, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh",
        ),
        text=dict(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
            rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False,
            eos_token_id=151645, pad_token_id=151643,
        ),
        cut3r=get_cut3r_config("cut3r-512-dpt"),
        cut3r_image_size=432,
        image_token_id=151646,
        fusion_num_heads=18,
        tokenizer="llava-hf/LLaVA-Video-7B-Qwen2-hf",
        vision_weights="llava-hf/LLaVA-Video-7B-Qwen2-hf",
        llm_weights="llava-hf/LLaVA-Video-7B-Qwen2-hf",
        cut3r_weights="cut3r_512_dpt_4_64.pth",
        dtype="bfloat16",
    ),
}  # fmt: skip


def get_preset(name: str, **overrides) -> Vlm3rConfig:
    """The ``Vlm3rConfig`` of preset ``name`` ("tiny", "vlm3r-7b") with fields replaced."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].replace(**overrides)
