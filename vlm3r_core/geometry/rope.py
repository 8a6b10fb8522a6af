"""2D rotary position embedding of CUT3R ("RoPE100").

Every token has an integer position (row, col): image patches at their grid cell, state tokens on
a 2D grid, and the camera (pose) token at (-1, -1). Each attention head of size D is split into a
row half and a column half; each half is split into quarters (u, v) of size Q = D/4 that are
rotated as pairs: u' = u cos(p theta_k) - v sin(p theta_k), v' = v cos(p theta_k) + u sin(p theta_k)
with theta_k = base^(-k/Q), k = 0..Q-1 and p the row (first half) or column (second half).

The angle p * theta is computed directly, so negative positions are genuine rotations by -theta.
(A lookup table indexed by position, as in the reference's pure-PyTorch fallback, cannot represent
the camera token at (-1, -1).) The arithmetic is done in float32 whatever the input dtype, like
the reference CUDA kernel.
"""

from __future__ import annotations

import torch

__all__ = ["RopePositions", "apply_rope_2d", "grid_positions"]


def grid_positions(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Integer (row, col) positions of a row-major height x width grid: (height*width, 2) int64."""
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    return torch.cartesian_prod(rows, cols)  # (h*w, 2)


class RopePositions:
    """The (row, col) positions of one token stream and their RoPE cos/sin, cached per head size.

    A model builds one per stream and frame; every attention layer of that stream reuses the
    tables (the encoder, image decoder and state decoder have different head sizes).
    """

    def __init__(self, positions: torch.Tensor, base: float = 100.0) -> None:
        if positions.dim() != 2 or positions.shape[-1] != 2:
            raise ValueError(f"positions must have shape (N, 2), got {tuple(positions.shape)}")
        self.positions = positions
        self.base = float(base)
        self._tables: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return self.positions.shape[0]

    def cos_sin(self, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the rotation angles laid out like a head: two (N, head_dim) float32."""
        if head_dim not in self._tables:
            if head_dim % 4:
                raise ValueError(f"2D RoPE needs a head size that is a multiple of 4, got {head_dim}")
            quarter = head_dim // 4
            device = self.positions.device
            exponent = torch.arange(quarter, dtype=torch.float32, device=device) / quarter
            inv_freq = 1.0 / torch.pow(
                torch.tensor(self.base, dtype=torch.float32, device=device), exponent
            )  # (Q,)
            angles = self.positions.to(torch.float32)[..., None] * inv_freq  # (N, 2, Q)
            row, col = angles[:, 0], angles[:, 1]
            # [row, row, col, col] matches the head layout [u_row, v_row, u_col, v_col].
            angles = torch.cat([row, row, col, col], dim=-1)  # (N, D)
            self._tables[head_dim] = (angles.cos(), angles.sin())
        return self._tables[head_dim]


def apply_rope_2d(x: torch.Tensor, positions: RopePositions) -> torch.Tensor:
    """Rotates queries or keys x (B, heads, N, D) by their tokens' positions; float32 result."""
    cos, sin = positions.cos_sin(x.shape[-1])  # (N, D) each
    x = x.float()
    u_row, v_row, u_col, v_col = x.split(x.shape[-1] // 4, dim=-1)
    rotated = torch.cat([-v_row, u_row, -v_col, u_col], dim=-1)  # (B, heads, N, D)
    return x * cos + rotated * sin
