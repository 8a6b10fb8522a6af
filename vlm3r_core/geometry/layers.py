"""Transformer layers of CUT3R: MLP, self/cross attention with 2D RoPE, encoder and decoder blocks.

Legend: B batch, N tokens of the stream being updated, M tokens of the other stream, C width.
Every module's attribute names are the official checkpoint's key names (`qkv`, `projq`, `norm_y`).
All LayerNorms use eps 1e-6; all MLPs are fc1 -> GELU (exact) -> fc2; attention is
`scaled_dot_product_attention` with scale head_dim^-0.5 and no mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlm3r_core.geometry.rope import RopePositions, apply_rope_2d

LAYER_NORM_EPS = 1e-6


def layer_norm(dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=LAYER_NORM_EPS)


class Mlp(nn.Module):
    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim or in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


def _rotate(x: torch.Tensor, positions: RopePositions, round_to_fp16: bool) -> torch.Tensor:
    """RoPE on (B, heads, N, D) `x`, returned in x's dtype.

    `round_to_fp16` reproduces the reference encoder, which casts q and k to float16, rotates them
    with float32 arithmetic and stores the result in float16 before casting back.
    """
    dtype = x.dtype
    if round_to_fp16:
        return apply_rope_2d(x.to(torch.float16), positions).to(torch.float16).to(dtype)
    return apply_rope_2d(x, positions).to(dtype)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; 2D RoPE on q and k when the tokens
    have positions."""

    def __init__(self, dim: int, num_heads: int, round_to_fp16: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.round_to_fp16 = round_to_fp16

    def forward(self, x: torch.Tensor, positions: RopePositions | None) -> torch.Tensor:
        """x (B, N, C) with N positions (or None: no RoPE) -> (B, N, C)."""
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads)  # (B, N, 3, h, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, h, N, d)
        if positions is not None:
            q = _rotate(q, positions, self.round_to_fp16)
            k = _rotate(k, positions, self.round_to_fp16)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))  # (B, N, C)


class CrossAttention(nn.Module):
    """Multi-head cross-attention; queries carry their positions, keys the other stream's."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_positions: RopePositions | None,
        y_positions: RopePositions | None,
    ) -> torch.Tensor:
        """x (B, N, C) attends to y (B, M, C) -> (B, N, C)."""
        B, N, C = x.shape
        M = y.shape[1]
        d = C // self.num_heads
        q = self.projq(x).reshape(B, N, self.num_heads, d).transpose(1, 2)  # (B, h, N, d)
        k = self.projk(y).reshape(B, M, self.num_heads, d).transpose(1, 2)  # (B, h, M, d)
        v = self.projv(y).reshape(B, M, self.num_heads, d).transpose(1, 2)  # (B, h, M, d)
        if x_positions is not None:
            q = _rotate(q, x_positions, round_to_fp16=False)
            k = _rotate(k, y_positions, round_to_fp16=False)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, h, N, d)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))  # (B, N, C)


class EncoderBlock(nn.Module):
    """Pre-norm ViT block: x += Attn(LN(x)); x += MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads, round_to_fp16=True)
        self.norm2 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, positions: RopePositions) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), positions)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Stream x reads stream y: self-attention, cross-attention to LN_y(y), MLP (all pre-norm).
    RoPE is applied when positions are given (not in the pose retriever)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = layer_norm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = layer_norm(dim)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm_y = layer_norm(dim)
        self.norm3 = layer_norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_positions: RopePositions | None = None,
        y_positions: RopePositions | None = None,
    ) -> torch.Tensor:
        """x (B, N, C), y (B, M, C) -> updated x (B, N, C); y is not changed."""
        x = x + self.attn(self.norm1(x), x_positions)
        x = x + self.cross_attn(self.norm2(x), self.norm_y(y), x_positions, y_positions)
        return x + self.mlp(self.norm3(x))
