"""Configuration of the VLM-3R model: encoders, fusion, projector, LLM, LoRA, prompt, weights.

One frozen dataclass fixes every size of the network and where its base weights come from; the
presets live in ``vlm3r_core/presets.py``. It round-trips through JSON (``to_dict``/``from_dict``)
and is stored with every saved model, together with the ``PromptConfig`` and frame count it was
trained with, so evaluation and serving rebuild exactly the same prompts.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from vlm3r_core.fusion import FUSION_VARIANTS
from vlm3r_core.geometry.config import Cut3rConfig
from vlm3r_core.prompting import PromptConfig

__all__ = ["BASE_COMPONENTS", "COMPONENTS", "TRAINABLE_PREFIXES", "Vlm3rConfig"]

# The parts of the model (their names are checkpoint keys), the frozen ones with base weights, and
# the prefixes of the parts that always train (the LLM trains through LoRA).
COMPONENTS = ("vision_tower", "cut3r", "fusion", "projector", "image_newline", "language_model")
BASE_COMPONENTS = ("vision_tower", "cut3r", "language_model")
TRAINABLE_PREFIXES = ("fusion.", "projector.", "image_newline")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Vlm3rConfig:
    """Sizes and settings of a VLM-3R model.

    Args:
        name: preset name this config came from (informational).
        vision: keyword arguments of ``transformers.SiglipVisionConfig`` describing the released
            vision tower (``num_hidden_layers`` counts all its blocks). The model builds all but the
            last block: its features are the penultimate layer, as LLaVA-Video uses them.
        text: keyword arguments of ``transformers.Qwen2Config`` for the LLM, including
            ``eos_token_id`` (``<|im_end|>``, where generation stops) and ``pad_token_id``.
        cut3r: the CUT3R network (``vlm3r_core.geometry``); its ``dec_embed_dim`` is the 3D width Cs.
        image_token_id: id of the ``<image>`` placeholder token in the tokenizer.
        cut3r_image_size: square side of CUT3R's input in pixels (432 gives a 27x27 patch grid).
        fusion_variant: ``"reference"`` (loads released weights) or ``"gated"`` (zero-init gate).
        fusion_num_heads: attention heads of the fusion block (18 at width 1152).
        fusion_dropout: dropout of the fusion branch during training.
        pool_stride: bilinear pooling of each frame's g x g grid to ceil(g / stride) per side.
        num_frames: frames sampled per video (training, evaluation and serving).
        prompt: how prompts are built (``vlm3r_core.prompting.PromptConfig``).
        lora_r, lora_alpha, lora_dropout: LoRA on every linear layer of the LLM.
        tokenizer: tokenizer folder or hub id; None is the offline tokenizer of the ``tiny`` preset.
        vision_weights: SigLIP weights (folder, URI or hub id of a SigLIP or LLaVA-Video HF
            checkpoint); None keeps the seeded random init.
        llm_weights: Qwen2 (+ LLaVA projector and newline) weights: a LLaVA-Video HF checkpoint
            (``LlavaOnevisionForConditionalGeneration`` layout) or a plain Qwen2 checkpoint; None
            keeps the seeded random init.
        cut3r_weights: CUT3R checkpoint for ``geometry.checkpoint.load_cut3r``; None keeps the random init.
        dtype: parameter dtype of the model ("float32", "bfloat16", "float16").
        seed: seed of the random init (so a model without base weights is reproducible).
    """

    vision: dict[str, Any]
    text: dict[str, Any]
    cut3r: Cut3rConfig
    cut3r_image_size: int
    image_token_id: int
    name: str = "custom"
    fusion_variant: str = "reference"
    fusion_num_heads: int = 18
    fusion_dropout: float = 0.1
    pool_stride: int = 2
    num_frames: int = 32
    prompt: PromptConfig = field(default_factory=PromptConfig)
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    tokenizer: str | None = None
    vision_weights: str | None = None
    llm_weights: str | None = None
    cut3r_weights: str | None = None
    dtype: str = "float32"
    seed: int = 0

    def __post_init__(self):
        for key in ("hidden_size", "image_size", "patch_size", "num_hidden_layers"):
            if key not in self.vision:
                raise ValueError(f"Vlm3rConfig.vision needs {key!r}")
        for key in ("hidden_size", "vocab_size", "num_hidden_layers", "eos_token_id", "pad_token_id"):
            if key not in self.text:
                raise ValueError(f"Vlm3rConfig.text needs {key!r}")
        if self.vision["num_hidden_layers"] < 2:
            raise ValueError(
                "Vlm3rConfig.vision.num_hidden_layers must be >= 2 (features are the penultimate layer)"
            )
        if self.cut3r_image_size % self.cut3r.patch_size:
            raise ValueError(
                f"cut3r_image_size {self.cut3r_image_size} is not a multiple of CUT3R patch {self.cut3r.patch_size}"
            )
        if self.fusion_variant not in FUSION_VARIANTS:
            raise ValueError(f"fusion_variant must be one of {FUSION_VARIANTS}, got {self.fusion_variant!r}")
        if self.vision["hidden_size"] % self.fusion_num_heads:
            raise ValueError(
                f"fusion_num_heads {self.fusion_num_heads} must divide the vision width {self.vision['hidden_size']}"
            )
        if not 0 <= self.fusion_dropout < 1 or not 0 <= self.lora_dropout < 1:
            raise ValueError("dropout probabilities must be in [0, 1)")
        if self.pool_stride < 1 or self.num_frames < 1 or self.lora_r < 1 or self.lora_alpha <= 0:
            raise ValueError("pool_stride, num_frames, lora_r and lora_alpha must be positive")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")

    # Derived sizes -------------------------------------------------------------------------------

    @property
    def vision_dim(self) -> int:
        """Cv, width of the SigLIP tokens (1152)."""
        return self.vision["hidden_size"]

    @property
    def spatial_dim(self) -> int:
        """Cs, width of the CUT3R tokens (768)."""
        return self.cut3r.dec_embed_dim

    @property
    def text_dim(self) -> int:
        """D, width of the LLM (3584)."""
        return self.text["hidden_size"]

    @property
    def siglip_image_size(self) -> int:
        return self.vision["image_size"]

    @property
    def vision_grid(self) -> int:
        """g, side of SigLIP's patch grid (27 = 384 // 14; the stride-14 convolution drops the rest)."""
        return self.vision["image_size"] // self.vision["patch_size"]

    @property
    def pooled_grid(self) -> int:
        """Side of the pooled grid, ceil(g / stride) (14)."""
        return math.ceil(self.vision_grid / self.pool_stride)

    @property
    def tokens_per_frame(self) -> int:
        """LLM tokens per frame: pooled rows, each followed by a newline token (14 * 15 = 210)."""
        return self.pooled_grid * (self.pooled_grid + 1)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    # JSON ----------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Vlm3rConfig:
        data = dict(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown Vlm3rConfig fields {sorted(unknown)}")
        data["cut3r"] = Cut3rConfig(**data["cut3r"])
        data["prompt"] = PromptConfig(**data.get("prompt", {}))
        return cls(**data)

    def replace(self, **overrides) -> Vlm3rConfig:
        return dataclasses.replace(self, **overrides)

    def with_cut3r_point_heads(self) -> Vlm3rConfig:
        """This config with CUT3R's point heads on (3D exports); the tokens do not depend on them."""
        return self.replace(cut3r=dataclasses.replace(self.cut3r, enable_point_heads=True))
