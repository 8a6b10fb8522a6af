"""Spatial-visual-view fusion: every 2D vision token queries the 3D tokens of its own frame.

Legend: ``F`` frames (batch axis of the block: attention never crosses frames), ``P`` vision
tokens per frame (729 = 27x27 for SigLIP at 384 px), ``Cv`` vision width (1152), ``K`` 3D tokens per
frame (730 = 1 camera token + 729 CUT3R patch tokens), ``Cs`` 3D width (768).

Two variants behind ``SpatialFusion(variant=...)``:

- ``reference``: the parameter layout of the released VLM-3R block (``CrossAttentionFusion`` of the
  reference, research section 1.4), so converted weights load unchanged:
  ``H' = H + LN_out(W_out MHA(W_q LN_v(H), W_k LN_s(Z), W_v LN_s(Z)))`` with separate q/k/v
  projections in front of a ``torch.nn.MultiheadAttention`` (which has its own in/out projections),
  about 9.75 M parameters at 1152/768/18 heads. One deliberate change: dropout applies to the
  attention branch only; the reference applied it to the sum, dropping SigLIP features too.
  At inference (no dropout) the two are identical.
- ``gated``: for new training runs. Pre-norm cross-attention with one set of q/k/v/o projections
  and a zero-initialised per-channel gate, ``H' = H + g * attn``, so an untrained block is the
  identity and training starts from the base model's behaviour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FUSION_VARIANTS = ("reference", "gated")


class SpatialFusion(nn.Module):
    """Residual cross-attention from vision tokens (queries) to 3D tokens (keys/values).

    Args:
        vision_dim: Cv, width of the vision tokens (and of the attention).
        spatial_dim: Cs, width of the 3D tokens.
        num_heads: attention heads; must divide ``vision_dim``.
        variant: ``"reference"`` or ``"gated"`` (see the module docstring).
        dropout: dropout on the attention branch during training.
    """

    def __init__(
        self,
        vision_dim: int,
        spatial_dim: int,
        num_heads: int,
        variant: str = "reference",
        dropout: float = 0.1,
    ):
        super().__init__()
        if variant not in FUSION_VARIANTS:
            raise ValueError(f"fusion variant must be one of {FUSION_VARIANTS}, got {variant!r}")
        if vision_dim % num_heads:
            raise ValueError(f"fusion num_heads={num_heads} must divide vision_dim={vision_dim}")
        self.variant = variant
        self.num_heads = num_heads
        self.dropout = nn.Dropout(dropout)
        if variant == "reference":
            # Names follow the released checkpoint (`model.fusion_block.<name>`).
            self.clip_norm = nn.LayerNorm(vision_dim)
            self.spatial_encoder_norm = nn.LayerNorm(spatial_dim)
            self.clip_query_proj = nn.Linear(vision_dim, vision_dim)
            self.spatial_encoder_key_proj = nn.Linear(spatial_dim, vision_dim)
            self.spatial_encoder_value_proj = nn.Linear(spatial_dim, vision_dim)
            self.cross_attention = nn.MultiheadAttention(vision_dim, num_heads, batch_first=True)
            self.out_proj = nn.Linear(vision_dim, vision_dim)
            self.out_norm = nn.LayerNorm(vision_dim)
        else:
            self.query_norm = nn.LayerNorm(vision_dim)
            self.key_value_norm = nn.LayerNorm(spatial_dim)
            self.q_proj = nn.Linear(vision_dim, vision_dim)
            self.k_proj = nn.Linear(spatial_dim, vision_dim)
            self.v_proj = nn.Linear(spatial_dim, vision_dim)
            self.o_proj = nn.Linear(vision_dim, vision_dim)
            self.gate = nn.Parameter(torch.zeros(vision_dim))

    def forward(self, vision_tokens: torch.Tensor, spatial_tokens: torch.Tensor) -> torch.Tensor:
        """Fuses one frame per batch row.

        Args:
            vision_tokens: (F, P, Cv) vision tokens H_v.
            spatial_tokens: (F, K, Cs) 3D tokens Z_3D = [camera token; patch tokens] of the same frame.

        Returns:
            (F, P, Cv) fused tokens H'_v = H_v + branch.
        """
        if vision_tokens.shape[0] != spatial_tokens.shape[0]:
            raise ValueError(
                f"fusion needs one row of 3D tokens per frame: vision {tuple(vision_tokens.shape)}, "
                f"3D {tuple(spatial_tokens.shape)}"
            )
        if self.variant == "reference":
            q = self.clip_query_proj(self.clip_norm(vision_tokens))  # (F, P, Cv)
            z = self.spatial_encoder_norm(spatial_tokens)  # (F, K, Cs)
            k = self.spatial_encoder_key_proj(z)  # (F, K, Cv)
            v = self.spatial_encoder_value_proj(z)  # (F, K, Cv)
            attn, _ = self.cross_attention(q, k, v, need_weights=False)  # (F, P, Cv)
            branch = self.out_norm(self.out_proj(attn))
        else:
            f, p, c = vision_tokens.shape
            k_len = spatial_tokens.shape[1]
            head_dim = c // self.num_heads
            z = self.key_value_norm(spatial_tokens)
            q = (
                self.q_proj(self.query_norm(vision_tokens))
                .view(f, p, self.num_heads, head_dim)
                .transpose(1, 2)
            )  # (F, nh, P, hd)
            k = self.k_proj(z).view(f, k_len, self.num_heads, head_dim).transpose(1, 2)  # (F, nh, K, hd)
            v = self.v_proj(z).view(f, k_len, self.num_heads, head_dim).transpose(1, 2)  # (F, nh, K, hd)
            attn = F.scaled_dot_product_attention(q, k, v)  # (F, nh, P, hd)
            branch = self.gate * self.o_proj(attn.transpose(1, 2).reshape(f, p, c))  # (F, P, Cv)
        return vision_tokens + self.dropout(branch)
