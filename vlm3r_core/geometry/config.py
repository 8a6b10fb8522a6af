"""CUT3R configuration and presets.

A `Cut3rConfig` fixes every size of the network; the weights' shapes follow from it. Presets:

- ``cut3r-512-dpt``: the released final model (`cut3r_512_dpt_4_64.pth`, CUT3R/CUT3R README),
  ViT-L encoder 1024x24, decoders 768x12, 768 state tokens, DPT point heads.
- ``cut3r-224-linear``: the released intermediate model (`cut3r_224_linear_4.pth`), same trunk,
  linear point heads.
- ``tiny``: the same structure at toy sizes, with the released patch size 16, for tests and the
  local demo on a CPU.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["Cut3rConfig", "CUT3R_PRESETS", "get_cut3r_config"]

HEAD_TYPES = ("dpt", "linear")


@dataclass(frozen=True)
class Cut3rConfig:
    """Sizes of a CUT3R network.

    Args:
        patch_size: side of the square image patches in pixels; H and W must be multiples.
        enc_embed_dim, enc_depth, enc_num_heads: ViT encoder width, blocks and heads.
        dec_embed_dim, dec_depth, dec_num_heads: width, blocks and heads of the image decoder
            (C_dec, the width of the tokens VLM-3R consumes). The pose retriever also uses
            `dec_num_heads` heads at width 2 * C_dec.
        state_dec_num_heads: heads of the state decoder (same width and depth as the image decoder).
        state_size: number of persistent state tokens S.
        pose_memory_size: number of slots of the pose retriever memory.
        mlp_ratio: hidden width of every MLP, as a multiple of its input width.
        rope_base: base of the 2D rotary position embedding ("RoPE100").
        head_type: "dpt" or "linear" point heads (the checkpoint decides).
        enable_pose_head: keep the camera pose MLP (poses (B, T, 7) in the output).
        enable_point_heads: keep the point-map heads (DPT or linear, and the world-frame
            `final_transform` blocks). Off by default: VLM-3R only needs the tokens.
        enable_rgb_head: the point heads include an RGB head (both released models have one).
        dpt_layer_dims: widths of the DPT head's four levels (fixed in the released code).
        dpt_feature_dim: common width of the DPT fusion blocks (fixed in the released code).
    """

    patch_size: int = 16
    enc_embed_dim: int = 1024
    enc_depth: int = 24
    enc_num_heads: int = 16
    dec_embed_dim: int = 768
    dec_depth: int = 12
    dec_num_heads: int = 12
    state_dec_num_heads: int = 16
    state_size: int = 768
    pose_memory_size: int = 256
    mlp_ratio: float = 4.0
    rope_base: float = 100.0
    head_type: str = "dpt"
    enable_pose_head: bool = True
    enable_point_heads: bool = False
    enable_rgb_head: bool = True
    dpt_layer_dims: tuple[int, int, int, int] = (96, 192, 384, 768)
    dpt_feature_dim: int = 256

    def __post_init__(self) -> None:
        object.__setattr__(self, "dpt_layer_dims", tuple(self.dpt_layer_dims))  # JSON gives a list
        if len(self.dpt_layer_dims) != 4 or min(self.dpt_layer_dims) < 1:
            raise ValueError(
                f"Cut3rConfig.dpt_layer_dims must be 4 positive widths, got {self.dpt_layer_dims}"
            )
        if self.dpt_feature_dim < 2 or self.dpt_feature_dim % 2:
            raise ValueError(f"Cut3rConfig.dpt_feature_dim must be even and >= 2, got {self.dpt_feature_dim}")
        positive = (
            "patch_size", "enc_embed_dim", "enc_depth", "enc_num_heads", "dec_embed_dim",
            "dec_num_heads", "state_dec_num_heads", "state_size", "pose_memory_size",
        )  # fmt: skip
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"Cut3rConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.dec_depth < 2:
            raise ValueError(
                f"Cut3rConfig.dec_depth must be >= 2 (the heads read layers "
                f"dec_depth*2//4 and dec_depth*3//4), got {self.dec_depth}"
            )
        if self.mlp_ratio <= 0 or self.rope_base <= 0:
            raise ValueError("Cut3rConfig.mlp_ratio and rope_base must be > 0")
        if self.head_type not in HEAD_TYPES:
            raise ValueError(f"Cut3rConfig.head_type must be one of {HEAD_TYPES}, got {self.head_type!r}")
        # 2D RoPE splits each head into (row, col) halves, each rotated as (u, v) quarter pairs.
        for dim_name, heads_name in (
            ("enc_embed_dim", "enc_num_heads"),
            ("dec_embed_dim", "dec_num_heads"),
            ("dec_embed_dim", "state_dec_num_heads"),
        ):
            dim, heads = getattr(self, dim_name), getattr(self, heads_name)
            if dim % heads or (dim // heads) % 4:
                raise ValueError(
                    f"Cut3rConfig.{dim_name}={dim} must split into {heads_name}={heads} heads "
                    f"whose size is a multiple of 4 (2D RoPE)"
                )
        if (2 * self.dec_embed_dim) % self.dec_num_heads:
            raise ValueError("2 * dec_embed_dim (pose retriever width) must be divisible by dec_num_heads")

    @property
    def enc_head_dim(self) -> int:
        return self.enc_embed_dim // self.enc_num_heads


# Sizes from the constructor strings stored in the released checkpoints (`args.model`), see
# https://github.com/CUT3R/CUT3R (README model table; the constructor string is read from each .pth).
CUT3R_PRESETS: dict[str, Cut3rConfig] = {
    "cut3r-512-dpt": Cut3rConfig(),
    "cut3r-224-linear": Cut3rConfig(head_type="linear"),
    "tiny": Cut3rConfig(
        enc_embed_dim=64,
        enc_depth=2,
        enc_num_heads=4,
        dec_embed_dim=48,
        dec_depth=2,
        dec_num_heads=4,
        state_dec_num_heads=4,
        state_size=16,
        pose_memory_size=8,
        dpt_layer_dims=(8, 16, 32, 64),
        dpt_feature_dim=16,
    ),
}


def get_cut3r_config(name: str, **overrides) -> Cut3rConfig:
    """Returns the preset `name` ("cut3r-512-dpt", "cut3r-224-linear", "tiny") with overrides."""
    if name not in CUT3R_PRESETS:
        raise ValueError(f"unknown CUT3R preset {name!r}; choose one of {sorted(CUT3R_PRESETS)}")
    return dataclasses.replace(CUT3R_PRESETS[name], **overrides)
