"""CUT3R output heads: camera pose MLP, world-frame modulation blocks, DPT and linear point heads.

Legend: B batch, N = h*w patch tokens, C_enc / C_dec encoder / decoder widths, (H, W) image size.
Units: metres (the released model is metric). Camera frame: OpenCV (x right, y down, z forward).
"World" is the camera frame of the video's first frame. Poses are camera-to-world
[t (3), q (4)] with the quaternion real part first (w, x, y, z), w >= 0.

The heads read `head_input` = [encoder output (B, N, C_enc), X^{L/2}[:, 1:], X^{3L/4}[:, 1:]
(B, N, C_dec) intermediate image-decoder layers without the camera token, and the final normalized
image-decoder output (B, 1+N, C_dec) whose token 0 is the camera token].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlm3r_core.geometry.config import Cut3rConfig
from vlm3r_core.geometry.layers import Attention, Mlp, layer_norm
from vlm3r_core.geometry.rope import RopePositions

__all__ = ["Cut3rHeads", "Cut3rPointmaps", "pose_to_cam_to_world"]


@dataclass
class Cut3rPointmaps:
    """Dense outputs of the point heads for one frame (or stacked over T by `encode_video`).

    Attributes:
        points_in_camera: (B, H, W, 3) metric 3D points in the frame's own camera frame.
        confidence_in_camera: (B, H, W) confidence (>= 1) of `points_in_camera`.
        points_in_world: (B, H, W, 3) the same points in the first frame's camera frame.
        confidence_in_world: (B, H, W) confidence (>= 1) of `points_in_world`.
        rgb: (B, H, W, 3) predicted colour in [-1, 1], or None without the RGB head.
    """

    points_in_camera: torch.Tensor
    confidence_in_camera: torch.Tensor
    points_in_world: torch.Tensor
    confidence_in_world: torch.Tensor
    rgb: torch.Tensor | None


def exp_radial_map(xyz: torch.Tensor) -> torch.Tensor:
    """v -> v / |v| * expm1(|v|) along the last axis (the released `depth_mode=('exp', -inf, inf)`)."""
    d = xyz.norm(dim=-1, keepdim=True)
    return xyz / d.clip(min=1e-8) * torch.expm1(d)


def decode_pose(raw: torch.Tensor) -> torch.Tensor:
    """Raw pose MLP output (B, 7) -> camera-to-world [t (3), q (4) (w, x, y, z), w >= 0]."""
    trans, quat = raw[..., :3], raw[..., 3:7]
    d = trans.norm(dim=-1, keepdim=True)
    trans = trans * (torch.expm1(d) / d.clip(min=1e-8))
    quat = F.normalize(quat, p=2, dim=-1)
    quat = torch.where(quat[..., :1] < 0, -quat, quat)
    return torch.cat([trans, quat], dim=-1)


def pose_to_cam_to_world(poses: torch.Tensor) -> torch.Tensor:
    """Poses (..., 7) [t, q (w, x, y, z)] -> camera-to-world matrices (..., 4, 4), same dtype.

    The rotation of a unit quaternion; the translation column is the camera centre in the world
    (the first frame's camera frame, metres).
    """
    t, q = poses[..., :3], F.normalize(poses[..., 3:7], p=2, dim=-1)
    w, x, y, z = q.unbind(-1)
    rotation = torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
            2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
            2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).unflatten(-1, (3, 3))  # (..., 3, 3)  # fmt: skip
    out = torch.zeros(*poses.shape[:-1], 4, 4, dtype=poses.dtype, device=poses.device)
    out[..., :3, :3] = rotation
    out[..., :3, 3] = t
    out[..., 3, 3] = 1
    return out  # (..., 4, 4)


def decode_points(fmap: torch.Tensor, flip_to_positive_z: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Head map (B, 4, H, W) -> points (B, H, W, 3) and confidence 1 + exp(c) (B, H, W)."""
    fmap = fmap.permute(0, 2, 3, 1)  # (B, H, W, 4)
    xyz = fmap[..., :3]
    if flip_to_positive_z:  # the linear model's own-camera branch predicts points in front
        xyz = xyz * torch.sign(xyz[..., 2:3])
    return exp_radial_map(xyz), 1 + fmap[..., 3].exp()


def decode_rgb(fmap: torch.Tensor) -> torch.Tensor:
    """Head map (B, 3, H, W) -> colour (B, H, W, 3) in [-1, 1]."""
    rgb = torch.sigmoid(fmap.permute(0, 2, 3, 1)) * (1 - 2e-6) + 1e-6
    return (rgb - 0.5) * 2


class PoseHead(nn.Module):
    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        self.mlp = Mlp(dim, int(dim * mlp_ratio), 7)

    def forward(self, camera_token: torch.Tensor) -> torch.Tensor:
        """camera_token (B, C_dec) -> pose (B, 7) camera-to-world, see `decode_pose`."""
        return decode_pose(self.mlp(camera_token))


class ModulatedLayerNorm(nn.Module):
    """LN(x) * (1 + scale) + shift with [shift, scale] = Linear(SiLU(z)) (adaLN, shift first)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = layer_norm(dim)
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        shift, scale = self.mlp(z).chunk(2, dim=-1)  # each (B, C)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


class ConditionModulationBlock(nn.Module):
    """Transformer block whose norms are modulated by the camera token (world-frame branch)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = ModulatedLayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = ModulatedLayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, z: torch.Tensor, positions: RopePositions) -> torch.Tensor:
        """x (B, N, C), z (B, C) camera token, positions of the N patches -> (B, N, C)."""
        x = x + self.attn(self.norm1(x, z), positions)
        return x + self.mlp(self.norm2(x, z))


class ResidualConvUnit(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """out = conv1x1(up2(RCU2(x + RCU1(skip)))), bilinear with align_corners=True."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.resConfUnit1 = ResidualConvUnit(dim)
        self.resConfUnit2 = ResidualConvUnit(dim)
        self.out_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DptScratch(nn.Module):
    """Per-level 3x3 projections to the common width and the four fusion blocks."""

    def __init__(self, layer_dims: tuple[int, int, int, int], feature_dim: int) -> None:
        super().__init__()
        # The official checkpoint also stores these convs as `layer{1..4}_rn` (aliases of the same
        # tensors); the loader folds them into `layer_rn.{0..3}`.
        self.layer_rn = nn.ModuleList(nn.Conv2d(d, feature_dim, 3, padding=1, bias=False) for d in layer_dims)
        self.refinenet1 = FusionBlock(feature_dim)
        self.refinenet2 = FusionBlock(feature_dim)
        self.refinenet3 = FusionBlock(feature_dim)
        self.refinenet4 = FusionBlock(feature_dim)


class DptHead(nn.Module):
    """DPT decoder from four token maps (strides 16) to a full-resolution (B, C_out, H, W) map."""

    def __init__(
        self,
        token_dims: tuple[int, int, int, int],
        out_channels: int,
        layer_dims: tuple[int, int, int, int],
        feature_dim: int,
    ) -> None:
        super().__init__()
        d0, d1, d2, d3 = layer_dims
        self.act_postprocess = nn.ModuleList(
            [
                nn.Sequential(nn.Conv2d(token_dims[0], d0, 1), nn.ConvTranspose2d(d0, d0, 4, stride=4)),
                nn.Sequential(nn.Conv2d(token_dims[1], d1, 1), nn.ConvTranspose2d(d1, d1, 2, stride=2)),
                nn.Sequential(nn.Conv2d(token_dims[2], d2, 1)),
                nn.Sequential(nn.Conv2d(token_dims[3], d3, 1), nn.Conv2d(d3, d3, 3, stride=2, padding=1)),
            ]
        )
        self.scratch = DptScratch(layer_dims, feature_dim)
        half = feature_dim // 2
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, half, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(half, half, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(half, out_channels, 1),
        )

    def forward(self, tokens: list[torch.Tensor], grid: tuple[int, int]) -> torch.Tensor:
        """tokens: four (B, N, C_i) maps on the (h, w) grid -> (B, C_out, 16h, 16w)."""
        h, w = grid
        maps = [t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w) for t in tokens]  # (B, C_i, h, w)
        maps = [post(m) for post, m in zip(self.act_postprocess, maps, strict=True)]  # strides 4, 8, 16, 32
        maps = [conv(m) for conv, m in zip(self.scratch.layer_rn, maps, strict=True)]  # (B, F, ., .)
        # Crop after the coarsest level's upsampling: odd grids (27x27 at 432 px) round up at /32.
        path = self.scratch.refinenet4(maps[3])[:, :, : maps[2].shape[2], : maps[2].shape[3]]
        path = self.scratch.refinenet3(path, maps[2])
        path = self.scratch.refinenet2(path, maps[1])
        path = self.scratch.refinenet1(path, maps[0])
        return self.head(path)  # (B, C_out, H, W)


class Cut3rHeads(nn.Module):
    """The `downstream_head` of the checkpoint: pose MLP and (optionally) the point heads.

    Submodules exist only when enabled, so a token-path model holds no point-head weights.
    """

    def __init__(self, config: Cut3rConfig) -> None:
        super().__init__()
        self.config = config
        dim, ratio = config.dec_embed_dim, config.mlp_ratio
        if config.enable_pose_head:
            self.pose_head = PoseHead(dim, ratio)
        if not config.enable_point_heads:
            return
        self.final_transform = nn.ModuleList(
            ConditionModulationBlock(dim, config.dec_num_heads, ratio) for _ in range(2)
        )
        if config.head_type == "dpt":
            dpt = dict(
                token_dims=(config.enc_embed_dim, dim, dim, dim),
                layer_dims=config.dpt_layer_dims,
                feature_dim=config.dpt_feature_dim,
            )
            self.dpt_self = DptHead(out_channels=4, **dpt)
            self.dpt_cross = DptHead(out_channels=4, **dpt)
            if config.enable_rgb_head:
                self.dpt_rgb = DptHead(out_channels=3, **dpt)
        else:
            pixels = config.patch_size**2
            self.proj = Mlp(dim, int(dim * ratio), 4 * pixels)
            self.cross_proj = Mlp(dim, int(dim * ratio), 4 * pixels)
            if config.enable_rgb_head:
                self.rgb_proj = Mlp(dim, int(dim * ratio), 3 * pixels)

    def forward(
        self, head_input: list[torch.Tensor], grid: tuple[int, int], positions: RopePositions
    ) -> tuple[torch.Tensor | None, Cut3rPointmaps | None]:
        """Runs the enabled heads on one frame.

        Args:
            head_input: the four tensors of the module docstring.
            grid: (h, w) patch grid.
            positions: the N patch positions (RoPE of the world-frame blocks).

        Returns:
            poses (B, 7) or None, pointmaps or None.
        """
        final = head_input[3]
        camera_token, tokens = final[:, 0], final[:, 1:]  # (B, C), (B, N, C)
        poses = self.pose_head(camera_token) if self.config.enable_pose_head else None
        if not self.config.enable_point_heads:
            return poses, None

        world_tokens = tokens
        for block in self.final_transform:
            world_tokens = block(world_tokens, camera_token, positions)
        if self.config.head_type == "dpt":
            shared = head_input[:3]
            points_cam, conf_cam = decode_points(self.dpt_self([*shared, tokens], grid))
            points_world, conf_world = decode_points(self.dpt_cross([*shared, world_tokens], grid))
            rgb = decode_rgb(self.dpt_rgb([*shared, tokens], grid)) if self.config.enable_rgb_head else None
        else:
            points_cam, conf_cam = decode_points(
                self._unpatchify(self.proj(tokens), grid), flip_to_positive_z=True
            )
            points_world, conf_world = decode_points(self._unpatchify(self.cross_proj(world_tokens), grid))
            rgb = (
                decode_rgb(self._unpatchify(self.rgb_proj(tokens), grid))
                if self.config.enable_rgb_head
                else None
            )
        return poses, Cut3rPointmaps(points_cam, conf_cam, points_world, conf_world, rgb)

    def _unpatchify(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """(B, N, C*p*p) per-patch predictions -> (B, C, h*p, w*p) via pixel shuffle."""
        h, w = grid
        x = x.transpose(1, 2).reshape(x.shape[0], -1, h, w)  # (B, C*p*p, h, w)
        return F.pixel_shuffle(x, self.config.patch_size)  # (B, C, H, W)
