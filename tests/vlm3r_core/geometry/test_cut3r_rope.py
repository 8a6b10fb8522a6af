"""2D RoPE: relative-position attention scores, the camera token at (-1, -1), layout."""

from __future__ import annotations

import math

import pytest
import torch

from vlm3r_core.geometry.rope import RopePositions, apply_rope_2d, grid_positions


def _rotate(x: torch.Tensor, positions: list[list[int]]) -> torch.Tensor:
    return apply_rope_2d(x, RopePositions(torch.tensor(positions), base=100.0))


def _scores(q, k, q_pos, k_pos):
    return (_rotate(q, q_pos) * _rotate(k, k_pos)).sum(-1)  # (B, heads, N)


def test_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 5, 16), torch.randn(2, 3, 5, 16)
    q_pos = torch.tensor([[0, 0], [3, 1], [-1, -1], [7, 2], [26, 26]])
    k_pos = torch.tensor([[1, 4], [0, 0], [2, 5], [-1, -1], [13, 0]])
    base = _scores(q, k, q_pos.tolist(), k_pos.tolist())
    for shift in ([5, 9], [-1, -1], [-30, 4]):
        shifted = _scores(
            q, k, (q_pos + torch.tensor(shift)).tolist(), (k_pos + torch.tensor(shift)).tolist()
        )
        torch.testing.assert_close(shifted, base, rtol=1e-4, atol=1e-4)


def test_camera_token_position_is_the_inverse_rotation_of_one_one():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 1, 64)
    minus = _rotate(x, [[-1, -1]])
    assert torch.isfinite(minus).all()
    torch.testing.assert_close(minus.norm(dim=-1), x.norm(dim=-1))  # a rotation
    torch.testing.assert_close(_rotate(minus, [[1, 1]]), x, rtol=1e-5, atol=1e-5)  # R(1) R(-1) = I
    # A cached table gives the same result as a fresh one, for every head size.
    positions = RopePositions(torch.tensor([[-1, -1], [0, 3]]))
    for head_dim in (48, 64, 48):
        y = torch.randn(1, 1, 2, head_dim)
        torch.testing.assert_close(
            apply_rope_2d(y, positions), _rotate(y, [[-1, -1], [0, 3]]), rtol=0, atol=0
        )


def test_origin_is_identity_and_layout_is_rotate_half_per_axis():
    x = torch.randn(1, 1, 1, 8)
    torch.testing.assert_close(_rotate(x, [[0, 0]]), x)
    # head of 8: [u_row (2), v_row (2), u_col (2), v_col (2)], theta_k = 100^(-k/2)
    e = torch.zeros(1, 1, 1, 8)
    e[..., 1] = 1.0  # u_row, k = 1
    out = _rotate(e, [[2, 0]])[0, 0, 0]
    angle = 2 * 100 ** (-1 / 2)
    expected = torch.zeros(8)
    expected[1], expected[3] = math.cos(angle), math.sin(angle)  # u' = u cos, v' = u sin
    torch.testing.assert_close(out, expected)


def test_bad_head_size_and_positions_are_rejected():
    with pytest.raises(ValueError, match="multiple of 4"):
        _rotate(torch.randn(1, 1, 1, 6), [[0, 0]])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        RopePositions(torch.zeros(3, 3, dtype=torch.long))


def test_grid_positions_are_row_major():
    assert grid_positions(2, 3).tolist() == [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]]
