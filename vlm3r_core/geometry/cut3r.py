"""CUT3R: a recurrent, metric 3D reconstruction model whose per-frame tokens VLM-3R consumes.

Our implementation of "Continuous 3D Perception Model with Persistent State" (CVPR 2025), loading
the released checkpoints (see `checkpoint.py`), module names and shapes as in the official
CUT3R repository (github.com/CUT3R/CUT3R, `src/dust3r/model.py`).

Legend: B videos (batch), T frames, (H, W) image size (multiples of 16), h = H/16, w = W/16,
N = h*w patch tokens (729 = 27x27 at 432x432), S state tokens (768), C_enc encoder width (1024),
C dec decoder width (768). Units: metres. Cameras: OpenCV (x right, y down, z forward); poses are
camera-to-world relative to the first frame's camera, [t (3), q (4) with w first, w >= 0].

Per frame t of a video (the recurrence is independent of the heads):

    F_t  = Encoder(image_t)                                   (N, C_enc)   ViT-L, 2D RoPE
    z_t  = pose_token if no frame seen yet else PoseRetriever.read(mean(F_t), M)
    X    = [z_t ; decoder_embed(F_t)] at positions [(-1, -1); patch grid]
    S    = state s (S, C_dec) at positions of a 2D grid
    for l in 1..L:  S, X = StateBlock_l(S reads X), ImageBlock_l(X reads S)   (simultaneously)
    s'   = dec_norm_state(S);  X' = dec_norm(X);  z'_t = X'[0];  F'_t = X'[1:]
    M'   = PoseRetriever.write(M, mean(F_t), z'_t)
    s, M = s', M'   (only for frames that are not masked), then reset to s0, M0 where asked

VLM-3R takes F'_t (patch tokens) and z'_t (camera token) of every frame.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from vlm3r_core.geometry.config import Cut3rConfig
from vlm3r_core.geometry.heads import Cut3rHeads, Cut3rPointmaps
from vlm3r_core.geometry.layers import DecoderBlock, EncoderBlock, layer_norm
from vlm3r_core.geometry.rope import RopePositions, grid_positions

__all__ = ["Cut3r", "Cut3rFrameOutput", "Cut3rOutput", "Cut3rState"]

# RoPE position of the camera (pose) token inside the decoders.
CAMERA_TOKEN_POSITION = (-1, -1)


@dataclass
class Cut3rState:
    """Recurrent memory of B videos between frames.

    Attributes:
        state_tokens: (B, S, C_dec) persistent scene state s.
        pose_memory: (B, M, 2*C_dec) pose retriever memory.
        frames_seen: (B,) int64 number of frames each video has consumed; the first frame of a
            video uses the learned pose token as its camera query, later frames the retriever.
    """

    state_tokens: torch.Tensor
    pose_memory: torch.Tensor
    frames_seen: torch.Tensor


@dataclass
class Cut3rFrameOutput:
    """Outputs for one frame of B videos (`Cut3r.step`). Masked videos get zeros.

    Attributes:
        patch_tokens: (B, N, C_dec) F'_t, row-major over the h x w patch grid.
        camera_tokens: (B, 1, C_dec) z'_t.
        poses: (B, 7) camera-to-world [t, q(w,x,y,z)] (float32), or None without the pose head.
        pointmaps: dense head outputs (float32), or None without the point heads.
    """

    patch_tokens: torch.Tensor
    camera_tokens: torch.Tensor
    poses: torch.Tensor | None = None
    pointmaps: Cut3rPointmaps | None = None


@dataclass
class Cut3rOutput:
    """Outputs for B videos of T frames (`Cut3r.encode_video`). Masked frames get zeros.

    Attributes:
        patch_tokens: (B, T, N, C_dec) F'_t per frame, row-major over the h x w patch grid.
        camera_tokens: (B, T, 1, C_dec) z'_t per frame.
        poses: (B, T, 7) camera-to-world [t, q(w,x,y,z)] (float32), or None without the pose head.
        pointmaps: each field stacked to (B, T, H, W, ...), or None without the point heads.
        frame_mask: (B, T) bool, True where the frame was real (not padding).
    """

    patch_tokens: torch.Tensor
    camera_tokens: torch.Tensor
    poses: torch.Tensor | None
    pointmaps: Cut3rPointmaps | None
    frame_mask: torch.Tensor


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> tokens (B, N, C_enc), row-major; no additive position embedding."""
        return self.proj(images).flatten(2).transpose(1, 2)  # (B, N, C_enc)


class PoseRetriever(nn.Module):
    """Learned memory that turns a frame's mean encoder feature into its camera query z_t.

    Width 2*C_dec, no RoPE. `read` appends `masked_token` to the projected global feature and lets
    it cross-attend to the memory; `write` lets the memory slots cross-attend to
    [projected global feature ; output camera token z'_t].
    """

    def __init__(self, config: Cut3rConfig) -> None:
        super().__init__()
        dim = config.dec_embed_dim
        self.proj_q = nn.Linear(config.enc_embed_dim, dim)
        self.masked_token = nn.Parameter(torch.randn(1, 1, dim) * 0.2)
        self.mem = nn.Parameter(torch.randn(1, config.pose_memory_size, 2 * dim) * 0.2)
        self.write_blocks = nn.ModuleList(
            DecoderBlock(2 * dim, config.dec_num_heads, config.mlp_ratio) for _ in range(2)
        )
        self.read_blocks = nn.ModuleList(
            DecoderBlock(2 * dim, config.dec_num_heads, config.mlp_ratio) for _ in range(2)
        )

    def read(self, global_feature: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """global_feature (B, 1, C_enc), memory (B, M, 2C_dec) -> camera query (B, 1, C_dec)."""
        query = self.proj_q(global_feature)  # (B, 1, C_dec)
        x = torch.cat([query, self.masked_token.expand(query.shape[0], -1, -1)], dim=-1)  # (B, 1, 2C_dec)
        for block in self.read_blocks:
            x = block(x, memory)
        return x[..., query.shape[-1] :]  # (B, 1, C_dec)

    def write(
        self, memory: torch.Tensor, global_feature: torch.Tensor, camera_token: torch.Tensor
    ) -> torch.Tensor:
        """memory (B, M, 2C_dec), global_feature (B, 1, C_enc), camera_token (B, 1, C_dec) -> new memory."""
        entry = torch.cat([self.proj_q(global_feature), camera_token], dim=-1)  # (B, 1, 2C_dec)
        for block in self.write_blocks:
            memory = block(memory, entry)
        return memory


class Cut3r(nn.Module):
    """CUT3R with the official checkpoint's module names.

    Build with `Cut3r.from_config(cfg)` (random weights) or `checkpoint.load_cut3r(uri)`
    (official `.pth` or our safetensors folder; `checkpoint.save_cut3r` writes the latter).
    Inference runs under `torch.no_grad` in the parameters' dtype (float32 by default; cast the
    model with `.to(torch.bfloat16)` for bf16 on a GPU). RoPE is always computed in float32.
    """

    def __init__(self, config: Cut3rConfig) -> None:
        super().__init__()
        self.config = config
        c_enc, c_dec, ratio = config.enc_embed_dim, config.dec_embed_dim, config.mlp_ratio

        self.patch_embed = PatchEmbed(config.patch_size, c_enc)
        self.enc_blocks = nn.ModuleList(
            EncoderBlock(c_enc, config.enc_num_heads, ratio) for _ in range(config.enc_depth)
        )
        self.enc_norm = layer_norm(c_enc)

        self.decoder_embed = nn.Linear(c_enc, c_dec)
        self.dec_blocks = nn.ModuleList(
            DecoderBlock(c_dec, config.dec_num_heads, ratio) for _ in range(config.dec_depth)
        )
        self.dec_norm = layer_norm(c_dec)

        self.register_tokens = nn.Embedding(config.state_size, c_enc)
        self.decoder_embed_state = nn.Linear(c_enc, c_dec)
        self.dec_blocks_state = nn.ModuleList(
            DecoderBlock(c_dec, config.state_dec_num_heads, ratio) for _ in range(config.dec_depth)
        )
        self.dec_norm_state = layer_norm(c_dec)

        self.pose_token = nn.Parameter(torch.randn(1, 1, c_dec) * 0.02)
        self.pose_retriever = PoseRetriever(config)
        if config.enable_pose_head or config.enable_point_heads:
            self.downstream_head = Cut3rHeads(config)
        else:
            self.downstream_head = None

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, config: Cut3rConfig) -> Cut3r:
        """A randomly initialised model in eval mode, frozen (VLM-3R never trains CUT3R)."""
        return cls(config).eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.pose_token.device

    @property
    def dtype(self) -> torch.dtype:
        return self.pose_token.dtype

    # ------------------------------------------------------------------ recurrent state

    def _initial_state_tokens(self) -> torch.Tensor:
        """s0 = decoder_embed_state(register_tokens): (1, S, C_dec), the same for every video."""
        return self.decoder_embed_state(self.register_tokens.weight)[None]

    def state_positions(self) -> torch.Tensor:
        """(S, 2) state token positions on a grid of width ceil-to-even(sqrt(S))."""
        width = int(self.config.state_size**0.5)
        width += width % 2
        index = torch.arange(self.config.state_size, device=self.device)
        return torch.stack([index // width, index % width], dim=-1)  # (S, 2)

    @torch.no_grad()
    def init_state(self, batch_size: int) -> Cut3rState:
        """The state of `batch_size` videos before their first frame."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return Cut3rState(
            state_tokens=self._initial_state_tokens().expand(batch_size, -1, -1).clone(),
            pose_memory=self.pose_retriever.mem.expand(batch_size, -1, -1).clone(),
            frames_seen=torch.zeros(batch_size, dtype=torch.long, device=self.device),
        )

    # ------------------------------------------------------------------ forward

    def _check_frames(self, frames: torch.Tensor, expected_dims: int, what: str) -> None:
        if frames.dim() != expected_dims or frames.shape[-3] != 3:
            raise ValueError(
                f"{what} must have shape {'(B, T, 3, H, W)' if expected_dims == 5 else '(B, 3, H, W)'}, "
                f"got {tuple(frames.shape)}"
            )
        if not frames.is_floating_point():
            raise ValueError(f"{what} must be a float tensor normalised to [-1, 1], got dtype {frames.dtype}")
        p = self.config.patch_size
        height, width = frames.shape[-2:]
        if height % p or width % p or height == 0 or width == 0:
            raise ValueError(
                f"{what}: height and width must be positive multiples of {p}, got {height}x{width}"
            )
        peak = frames.abs().max().item() if frames.numel() else 0.0
        if peak > 1.0 + 1e-3:
            raise ValueError(
                f"{what} must be normalised to [-1, 1] (mean = std = 0.5), got values up to {peak:.3g}"
            )

    def _forward_frame(
        self,
        images: torch.Tensor,
        state_tokens: torch.Tensor,
        pose_memory: torch.Tensor,
        frames_seen: torch.Tensor,
    ) -> tuple[Cut3rFrameOutput, torch.Tensor, torch.Tensor]:
        """One frame for b videos that all consume it. Returns outputs, new state, new memory."""
        b, _, height, width = images.shape
        grid = (height // self.config.patch_size, width // self.config.patch_size)
        base = self.config.rope_base
        patch_grid = grid_positions(*grid, device=self.device)  # (N, 2)
        patch_positions = RopePositions(patch_grid, base)

        features = self.patch_embed(images)  # (b, N, C_enc)
        for block in self.enc_blocks:
            features = block(features, patch_positions)
        features = self.enc_norm(features)

        global_feature = features.mean(dim=1, keepdim=True)  # (b, 1, C_enc)
        camera_query = self.pose_token.expand(b, -1, -1)  # (b, 1, C_dec)
        if bool((frames_seen > 0).any()):
            retrieved = self.pose_retriever.read(global_feature, pose_memory)  # (b, 1, C_dec)
            camera_query = torch.where((frames_seen > 0)[:, None, None], retrieved, camera_query)

        image_tokens = torch.cat([camera_query, self.decoder_embed(features)], dim=1)  # (b, 1+N, C_dec)
        camera_position = torch.tensor([CAMERA_TOKEN_POSITION], device=self.device)
        image_positions = RopePositions(torch.cat([camera_position, patch_grid], dim=0), base)  # 1+N
        state_positions = RopePositions(self.state_positions(), base)  # S

        depth = self.config.dec_depth
        hooks = {depth * 2 // 4, depth * 3 // 4}
        hooked = {}
        state = state_tokens
        for layer, (state_block, image_block) in enumerate(
            zip(self.dec_blocks_state, self.dec_blocks, strict=True), start=1
        ):
            # Both streams read the other's previous layer output (simultaneous update).
            state, image_tokens = (
                state_block(state, image_tokens, state_positions, image_positions),
                image_block(image_tokens, state, image_positions, state_positions),
            )
            if layer in hooks:
                hooked[layer] = image_tokens[:, 1:]
        new_state = self.dec_norm_state(state)  # (b, S, C_dec)
        final = self.dec_norm(image_tokens)  # (b, 1+N, C_dec)
        camera_tokens, patch_tokens = final[:, :1], final[:, 1:]

        new_memory = self.pose_retriever.write(pose_memory, global_feature, camera_tokens)

        poses, pointmaps = None, None
        if self.downstream_head is not None:
            head_input = [features, hooked[depth * 2 // 4], hooked[depth * 3 // 4], final]
            poses, pointmaps = self.downstream_head(head_input, grid, patch_positions)
            poses = poses.float() if poses is not None else None
            if pointmaps is not None:
                pointmaps = _map_pointmaps(pointmaps, lambda x: x.float())
        out = Cut3rFrameOutput(patch_tokens, camera_tokens, poses, pointmaps)
        return out, new_state, new_memory

    @torch.no_grad()
    def step(
        self,
        frames: torch.Tensor,
        state: Cut3rState,
        mask: torch.Tensor | None = None,
        reset: torch.Tensor | None = None,
    ) -> tuple[Cut3rFrameOutput, Cut3rState]:
        """Consumes one frame of each of B videos (live video, serving).

        Args:
            frames: (B, 3, H, W) float in [-1, 1] (mean = std = 0.5 normalisation).
            state: the videos' state (from `init_state` or the previous `step`).
            mask: (B,) bool, False where a video has no frame now: its state is left unchanged
                and its outputs are zeros. None means all True.
            reset: (B,) bool, True to reset a video's state and pose memory to their initial
                values after this frame (as the reference's `reset`; the frame counter is kept, so
                the next frame still queries the retriever). Start a new video with `init_state`.

        Returns:
            The frame's outputs and the new state (a new object; `state` is not modified).
        """
        self._check_frames(frames, 4, "frames")
        B = frames.shape[0]
        if state.state_tokens.shape[0] != B:
            raise ValueError(f"state holds {state.state_tokens.shape[0]} videos but frames has B={B}")
        frames = frames.to(device=self.device, dtype=self.dtype)
        mask = _bool_vector(mask, B, "mask", self.device)
        valid = mask.nonzero().squeeze(1)  # indices of videos with a frame

        if valid.numel() == B:  # lock-step fast path: no gather/scatter
            out, new_tokens, new_memory = self._forward_frame(
                frames, state.state_tokens, state.pose_memory, state.frames_seen
            )
            new_state = Cut3rState(new_tokens, new_memory, state.frames_seen + 1)
        else:
            out, new_state = self._forward_subset(frames, state, valid)

        if reset is not None:
            reset = _bool_vector(reset, B, "reset", self.device)[:, None, None]
            new_state = Cut3rState(
                torch.where(
                    reset,
                    self._initial_state_tokens().to(new_state.state_tokens.dtype),
                    new_state.state_tokens,
                ),
                torch.where(reset, self.pose_retriever.mem, new_state.pose_memory),
                new_state.frames_seen,
            )
        return out, new_state

    def _forward_subset(
        self, frames: torch.Tensor, state: Cut3rState, valid: torch.Tensor
    ) -> tuple[Cut3rFrameOutput, Cut3rState]:
        """Runs only the videos in `valid`; the others keep their state and get zero outputs."""
        B, _, height, width = frames.shape
        p, c_dec = self.config.patch_size, self.config.dec_embed_dim
        num_patches = (height // p) * (width // p)
        out = Cut3rFrameOutput(
            patch_tokens=frames.new_zeros(B, num_patches, c_dec),
            camera_tokens=frames.new_zeros(B, 1, c_dec),
            poses=frames.new_zeros(B, 7, dtype=torch.float32) if self.config.enable_pose_head else None,
        )
        if valid.numel() == 0:
            if self.config.enable_point_heads:
                out.pointmaps = _zero_pointmaps(B, height, width, self.config.enable_rgb_head, frames.device)
            return out, dataclasses.replace(state)

        sub, sub_tokens, sub_memory = self._forward_frame(
            frames[valid], state.state_tokens[valid], state.pose_memory[valid], state.frames_seen[valid]
        )
        out.patch_tokens[valid] = sub.patch_tokens
        out.camera_tokens[valid] = sub.camera_tokens
        if sub.poses is not None:
            out.poses[valid] = sub.poses
        if sub.pointmaps is not None:
            out.pointmaps = _zero_pointmaps(B, height, width, self.config.enable_rgb_head, frames.device)
            for field in dataclasses.fields(Cut3rPointmaps):
                value = getattr(sub.pointmaps, field.name)
                if value is not None:
                    getattr(out.pointmaps, field.name)[valid] = value
        new_state = Cut3rState(
            state.state_tokens.index_copy(0, valid, sub_tokens),
            state.pose_memory.index_copy(0, valid, sub_memory),
            state.frames_seen.index_add(0, valid, torch.ones_like(valid)),
        )
        return out, new_state

    @torch.no_grad()
    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> Cut3rOutput:
        """Runs B independent videos of T frames through CUT3R in lock-step.

        Args:
            frames: (B, T, 3, H, W) float in [-1, 1] (mean = std = 0.5 normalisation), H and W
                multiples of 16 (432x432 gives a 27x27 grid, N = 729).
            mask: (B, T) bool, False for padding frames of shorter videos. A masked frame does not
                update its video's state and gets zero outputs; each video's results equal those
                of running it alone on its unmasked frames. None means all True.

        Returns:
            `Cut3rOutput` with patch_tokens (B, T, N, C_dec), camera_tokens (B, T, 1, C_dec),
            poses (B, T, 7) or None, pointmaps or None, frame_mask (B, T).
        """
        self._check_frames(frames, 5, "frames")
        B, T = frames.shape[:2]
        if mask is None:
            mask = torch.ones(B, T, dtype=torch.bool, device=self.device)
        elif tuple(mask.shape) != (B, T):
            raise ValueError(f"mask must have shape (B, T) = {(B, T)}, got {tuple(mask.shape)}")
        mask = mask.to(device=self.device, dtype=torch.bool)

        state = self.init_state(B)
        steps = []
        for t in range(T):
            out, state = self.step(frames[:, t], state, mask[:, t])
            steps.append(out)
        poses = torch.stack([s.poses for s in steps], dim=1) if self.config.enable_pose_head else None
        pointmaps = None
        if self.config.enable_point_heads:
            pointmaps = Cut3rPointmaps(**{
                f.name: None if getattr(steps[0].pointmaps, f.name) is None
                else torch.stack([getattr(s.pointmaps, f.name) for s in steps], dim=1)
                for f in dataclasses.fields(Cut3rPointmaps)
            })  # fmt: skip
        return Cut3rOutput(
            patch_tokens=torch.stack([s.patch_tokens for s in steps], dim=1),  # (B, T, N, C_dec)
            camera_tokens=torch.stack([s.camera_tokens for s in steps], dim=1),  # (B, T, 1, C_dec)
            poses=poses,
            pointmaps=pointmaps,
            frame_mask=mask,
        )


def _bool_vector(x: torch.Tensor | None, size: int, name: str, device: torch.device) -> torch.Tensor:
    if x is None:
        return torch.ones(size, dtype=torch.bool, device=device)
    if tuple(x.shape) != (size,):
        raise ValueError(f"{name} must have shape (B,) = ({size},), got {tuple(x.shape)}")
    return x.to(device=device, dtype=torch.bool)


def _map_pointmaps(pointmaps: Cut3rPointmaps, fn) -> Cut3rPointmaps:
    return Cut3rPointmaps(**{
        f.name: None if getattr(pointmaps, f.name) is None else fn(getattr(pointmaps, f.name))
        for f in dataclasses.fields(Cut3rPointmaps)
    })  # fmt: skip


def _zero_pointmaps(B: int, height: int, width: int, with_rgb: bool, device: torch.device) -> Cut3rPointmaps:
    def zeros(*shape: int) -> torch.Tensor:
        return torch.zeros(B, height, width, *shape, device=device)

    return Cut3rPointmaps(zeros(3), zeros(), zeros(3), zeros(), zeros(3) if with_rgb else None)
