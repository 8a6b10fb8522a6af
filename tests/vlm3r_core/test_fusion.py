from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlm3r_core.fusion import SpatialFusion


def _inputs(frames=3, p=16, k=17, cv=32, cs=24):
    g = torch.Generator().manual_seed(0)
    return torch.randn(frames, p, cv, generator=g), torch.randn(frames, k, cs, generator=g)


def test_reference_layout_matches_the_released_block():
    torch.manual_seed(0)
    block = SpatialFusion(1152, 768, 18, "reference").to("meta")
    names = {n for n, _ in block.named_parameters()}
    assert names == {
        "clip_norm.weight", "clip_norm.bias", "spatial_encoder_norm.weight", "spatial_encoder_norm.bias",
        "clip_query_proj.weight", "clip_query_proj.bias", "spatial_encoder_key_proj.weight",
        "spatial_encoder_key_proj.bias", "spatial_encoder_value_proj.weight", "spatial_encoder_value_proj.bias",
        "cross_attention.in_proj_weight", "cross_attention.in_proj_bias", "cross_attention.out_proj.weight",
        "cross_attention.out_proj.bias", "out_proj.weight", "out_proj.bias", "out_norm.weight", "out_norm.bias",
    }  # fmt: skip
    assert sum(p.numel() for p in block.parameters()) == 9_747_456  # the released fusion block: about 9.75 M (width 1152, 18 heads)


def test_reference_computes_the_published_formula():
    torch.manual_seed(0)
    block = SpatialFusion(32, 24, 4, "reference").eval()
    h, z = _inputs()
    q = block.clip_query_proj(block.clip_norm(h))
    zn = block.spatial_encoder_norm(z)
    k, v = block.spatial_encoder_key_proj(zn), block.spatial_encoder_value_proj(zn)
    # nn.MultiheadAttention by hand: in-projection, 4 heads of 8, softmax(QK^T / sqrt(8)) V, out-projection.
    wq, wk, wv = block.cross_attention.in_proj_weight.chunk(3)
    bq, bk, bv = block.cross_attention.in_proj_bias.chunk(3)
    heads = lambda x: x.view(x.shape[0], x.shape[1], 4, 8).transpose(1, 2)  # noqa: E731
    attn = torch.softmax(
        heads(q @ wq.T + bq) @ heads(k @ wk.T + bk).transpose(-1, -2) / 8**0.5, dim=-1
    ) @ heads(v @ wv.T + bv)
    attn = block.cross_attention.out_proj(attn.transpose(1, 2).reshape(3, 16, 32))
    expected = h + block.out_norm(block.out_proj(attn))
    torch.testing.assert_close(block(h, z), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", ["reference", "gated"])
def test_frames_do_not_attend_to_each_other(variant):
    torch.manual_seed(0)
    block = SpatialFusion(32, 24, 4, variant).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.1 * torch.randn_like(p))  # a trained-looking gate too
    h, z = _inputs()
    z2 = z.clone()
    z2[1] = torch.randn_like(z2[1])  # (a constant shift would vanish in the LayerNorm)
    out, out2 = block(h, z), block(h, z2)
    assert torch.equal(out[0], out2[0]) and torch.equal(out[2], out2[2])
    assert not torch.allclose(out[1], out2[1])


def test_gated_block_starts_as_identity_and_learns():
    torch.manual_seed(0)
    block = SpatialFusion(32, 24, 4, "gated")
    h, z = _inputs()
    assert torch.equal(block.eval()(h, z), h)
    block.train()
    loss = F.mse_loss(block(h, z), h + 1.0)
    loss.backward()
    assert block.gate.grad.abs().sum() > 0


def test_rejects_bad_settings():
    with pytest.raises(ValueError, match="variant"):
        SpatialFusion(32, 24, 4, "concat")
    with pytest.raises(ValueError, match="divide"):
        SpatialFusion(30, 24, 4)
    with pytest.raises(ValueError, match="one row of 3D tokens per frame"):
        SpatialFusion(32, 24, 4)(torch.zeros(2, 5, 32), torch.zeros(3, 5, 24))
