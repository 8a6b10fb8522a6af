"""Live video sessions: CUT3R's recurrent state, a bounded set of keyframes for the LLM, snapshots.

A serving replica holds one `LiveSession` per open stream. Frames are pushed one at a time (uint8
RGB and a timestamp); the session runs CUT3R's recurrent `step` and SigLIP on the frames its
`KeyframePolicy` admits, keeps the LLM inputs of a bounded, uniformly thinned set of keyframes and
answers `features()` with the same `VideoFeatures` the offline path computes. Nothing here knows
about Ray.

Legend: K `max_keyframes`, T retained keyframes (<= K), P SigLIP tokens per frame, Cv SigLIP
width, N CUT3R patch tokens, Cs CUT3R width, S CUT3R state tokens, Mp pose-memory slots, n points
kept per keyframe, (s, s) SigLIP and (G, G) CUT3R input sides. Times in seconds since the start of
the stream. Poses and points are in CUT3R's world (the first update's camera frame, OpenCV axes,
metres; see `vlm3r_core.geometry.reconstruction`).

Keyframe policy (`KeyframePolicy`):

- Updates (a rate limit). The first pushed frame updates the session. A later frame updates it
  when at least `min_interval_s` seconds *and* `min_interval_frames` pushed frames separate it
  from the last update; other frames are dropped without any model work. An update runs CUT3R's
  `step` (the recurrent state advances) and SigLIP on the frame.
- Retention (bounded memory). Updates are numbered u = 0, 1, 2, ... The session keeps a stride
  s, a power of two starting at 1, and after update u retains exactly
  R = {v <= u : v % s == 0} | {u}: a uniform grid over everything seen plus the latest update.
  When |R| would exceed K, s doubles (at most once per update). s never shrinks, so a dropped
  keyframe never returns; the first update is always kept. Once more than K updates were made,
  floor(K / 2) + 1 <= T <= K. Fewer than K + 1 updates are all kept: pushing the 32 frames the
  offline sampler picks with K >= 32 and no rate limit retains every one of them.

Equivalence with the offline path: for those frames, `features()` equals
`Vlm3rForConditionalGeneration.encode_frames` of the same frames bit for bit (float32, CPU): CUT3R
runs the same `step` as `encode_video` on one video, SigLIP runs through the same
`siglip_features`, whose output for a frame does not depend on its batch.

Memory (`memory_bytes`, a bound in `memory_bound_bytes`): b bytes per element of the model dtype,
  state     (S * Cs + Mp * 2 * Cs) * b + 8                       (CUT3R state, pose memory, counter)
  keyframe  (P * Cv + (1 + N) * Cs) * b + 28 [pose head] + 19 * n [point heads]
  total    <= state + K * keyframe.

Snapshot (`snapshot` / `restore`, `save` / `load` with a storage URI): one safetensors file. Its
tensors are `state.state_tokens` (1, S, Cs), `state.pose_memory` (1, Mp, 2 Cs),
`state.frames_seen` (1,), and, when T > 0, `keyframes.vision_features` (T, P, Cv),
`keyframes.camera_tokens` (T, 1, Cs), `keyframes.patch_tokens` (T, N, Cs), `keyframes.pose`
(T, 7) with the pose head, `keyframes.points` (T, n, 3), `keyframes.point_colors` (T, n, 3) uint8
and `keyframes.point_confidence` (T, n) with point heads. Its header metadata has one key,
"vlm3r-live-session", whose value is JSON: `format`, `version` (1), `session_id`, the policy, the
counters (stride, frames pushed, updates, last update, last two timestamps), each keyframe's
update index, frame index and timestamp, and the model settings the tensors depend on (CUT3R
config, image sizes, SigLIP config, dtype; checked on restore). No pickle; the same session gives
the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct
from dataclasses import dataclass

import numpy as np
import safetensors.torch
import torch

from vlm3r_core import storage
from vlm3r_core.geometry import Cut3rState
from vlm3r_core.geometry.reconstruction import (
    CameraTrajectory,
    Reconstruction,
    ReconstructionConfig,
    build_point_cloud,
    pixels_to_colors,
    subsample_pixels,
)
from vlm3r_core.video import DEFAULT_NUM_FRAMES
from vlm3r_core.vlm.model import VideoFeatures, Vlm3rForConditionalGeneration, siglip_features
from vlm3r_core.vlm.processor import resize_frames

__all__ = ["KeyframePolicy", "LiveFeatures", "LiveSession", "PushResult", "SNAPSHOT_FORMAT"]

SNAPSHOT_FORMAT = "vlm3r-live-session"
SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class KeyframePolicy:
    """Which pushed frames update a live session and which keyframes it keeps (module docstring).

    Args:
        min_interval_s: least time between two state updates (seconds); 0 is no limit.
        min_interval_frames: least number of pushed frames between two updates; 1 is no limit.
        max_keyframes: K, most keyframes retained for the LLM (>= 2). The LLM sees T <= K frames.
        points_per_keyframe: with CUT3R point heads, world points kept per retained keyframe for
            the 3D export (a uniform subset of its G * G pixels); 0 keeps none.
    """

    min_interval_s: float = 0.0
    min_interval_frames: int = 1
    max_keyframes: int = DEFAULT_NUM_FRAMES
    points_per_keyframe: int = 4096

    def __post_init__(self) -> None:
        if not math.isfinite(self.min_interval_s) or self.min_interval_s < 0:
            raise ValueError(f"min_interval_s must be a finite number >= 0, got {self.min_interval_s}")
        if self.min_interval_frames < 1:
            raise ValueError(f"min_interval_frames must be >= 1, got {self.min_interval_frames}")
        if self.max_keyframes < 2:
            raise ValueError(
                f"max_keyframes must be >= 2 (the first and the latest update), got {self.max_keyframes}"
            )
        if self.points_per_keyframe < 0:
            raise ValueError(f"points_per_keyframe must be >= 0, got {self.points_per_keyframe}")


@dataclass(frozen=True)
class PushResult:
    """What one `LiveSession.push` did.

    Attributes:
        frame_index: the frame's number in the stream (0-based, every pushed frame counts).
        updated: True when the frame ran through the encoders (else the policy dropped it).
        num_keyframes: T, keyframes retained after the push.
        stride: s, the retention stride after the push.
    """

    frame_index: int
    updated: bool
    num_keyframes: int
    stride: int


@dataclass
class LiveFeatures:
    """What a prompt about the stream needs.

    Attributes:
        features: `VideoFeatures` of the T retained keyframes, batch 1, in stream order.
        timestamps: T seconds of the keyframes (the prompt's time line).
        frame_indices: T stream frame numbers of the keyframes.
        duration_s: how long the stream has lasted.
    """

    features: VideoFeatures
    timestamps: tuple[float, ...]
    frame_indices: tuple[int, ...]
    duration_s: float


@dataclass
class _Keyframe:
    """One retained keyframe: its LLM inputs, pose and (optionally) a few world points."""

    update_index: int
    frame_index: int
    timestamp_s: float
    vision_features: torch.Tensor  # (P, Cv)
    camera_tokens: torch.Tensor  # (1, Cs)
    patch_tokens: torch.Tensor  # (N, Cs)
    pose: torch.Tensor | None  # (7,) float32, camera-to-world [t, q]
    points: torch.Tensor | None  # (n, 3) float32, world
    point_colors: torch.Tensor | None  # (n, 3) uint8
    point_confidence: torch.Tensor | None  # (n,) float32

    def tensors(self) -> list[torch.Tensor]:
        return [t for t in dataclasses.astuple(self)[3:] if isinstance(t, torch.Tensor)]


_KEYFRAME_TENSORS = (
    "vision_features", "camera_tokens", "patch_tokens", "pose", "points", "point_colors", "point_confidence",
)  # fmt: skip


def _model_settings(model: Vlm3rForConditionalGeneration) -> dict:
    """The settings a snapshot's tensors depend on, as plain JSON values."""
    cfg = model.config
    settings = {
        "cut3r": dataclasses.asdict(cfg.cut3r),
        "cut3r_image_size": cfg.cut3r_image_size,
        "vision": cfg.vision,
        "dtype": cfg.dtype,
    }
    return json.loads(json.dumps(settings))


class LiveSession:
    """One live video stream: push frames, read the LLM features, export 3D, snapshot and restore.

    Args:
        model: a VLM-3R model with at least the ``vision_tower`` and ``cut3r`` components (shared by
            every session of a replica; the session never changes it). With CUT3R point heads
            (``Cut3rConfig.enable_point_heads``) the session also keeps world points per keyframe.
        policy: the keyframe policy; default ``KeyframePolicy(max_keyframes=model.config.num_frames)``.
        session_id: a name stored in snapshots.
    """

    def __init__(
        self,
        model: Vlm3rForConditionalGeneration,
        policy: KeyframePolicy | None = None,
        session_id: str = "",
    ) -> None:
        model.require(("vision_tower", "cut3r"), "LiveSession")
        self.model = model
        self.policy = policy or KeyframePolicy(max_keyframes=model.config.num_frames)
        self.session_id = session_id
        self.state: Cut3rState = model.cut3r.init_state(1)
        self.keyframes: list[_Keyframe] = []
        self.stride = 1
        self.num_pushed = 0
        self.num_updates = 0
        self.last_update_frame = -1
        self.last_update_timestamp_s = -math.inf
        self.last_timestamp_s: float | None = None
        self.previous_timestamp_s: float | None = None

    # Pushing frames --------------------------------------------------------------------------------

    def push(self, frame: np.ndarray | torch.Tensor, timestamp_s: float) -> PushResult:
        """Offers one frame to the session.

        Args:
            frame: (H, W, 3) uint8 RGB (any size; resized as the processor resizes).
            timestamp_s: seconds since the start of the stream; must not decrease.

        Returns:
            What happened (`PushResult`).
        """
        frame = torch.as_tensor(np.asarray(frame))
        if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[-1] != 3 or 0 in frame.shape:
            raise ValueError(f"a frame must be (H, W, 3) uint8 RGB, got {tuple(frame.shape)} {frame.dtype}")
        timestamp_s = float(timestamp_s)
        if not math.isfinite(timestamp_s) or timestamp_s < 0:
            raise ValueError(f"timestamp_s must be a finite number >= 0, got {timestamp_s}")
        if self.last_timestamp_s is not None and timestamp_s < self.last_timestamp_s:
            raise ValueError(f"timestamps must not decrease: {timestamp_s} after {self.last_timestamp_s}")
        index = self.num_pushed
        due = self.num_updates == 0 or (
            timestamp_s - self.last_update_timestamp_s >= self.policy.min_interval_s
            and index - self.last_update_frame >= self.policy.min_interval_frames
        )
        if due:  # encoders first: if they raise, the session is left as it was
            keyframe, self.state = self._encode(frame, index, timestamp_s)
            self._retain(keyframe)
            self.num_updates += 1
            self.last_update_frame, self.last_update_timestamp_s = index, timestamp_s
        self.num_pushed += 1
        self.previous_timestamp_s, self.last_timestamp_s = self.last_timestamp_s, timestamp_s
        return PushResult(index, due, len(self.keyframes), self.stride)

    @torch.no_grad()
    def _encode(self, frame: torch.Tensor, index: int, timestamp_s: float) -> tuple[_Keyframe, Cut3rState]:
        """Both encoders on one frame: its keyframe record and CUT3R's next state."""
        model, cfg = self.model, self.model.config
        dtype = cfg.torch_dtype
        # As `preprocess_frames` + `encode_frames`: resize on the CPU in float32, then cast and move.
        cut3r_pixels = resize_frames(frame[None], cfg.cut3r_image_size)  # (1, 3, G, G)
        siglip_pixels = resize_frames(frame[None], cfg.siglip_image_size)  # (1, 3, s, s)
        out, state = model.cut3r.step(cut3r_pixels.to(model.device, dtype), self.state)
        vision = siglip_features(model.vision_tower, siglip_pixels.to(model.device, dtype))  # (1, P, Cv)
        points = colors = confidence = None
        if out.pointmaps is not None and self.policy.points_per_keyframe > 0:
            g = cfg.cut3r_image_size
            keep = subsample_pixels(g * g, self.policy.points_per_keyframe)  # (n,)
            points = out.pointmaps.points_in_world[0].flatten(0, 1)[keep.to(model.device)]  # (n, 3)
            confidence = out.pointmaps.confidence_in_world[0].flatten()[keep.to(model.device)]  # (n,)
            colors = pixels_to_colors(cut3r_pixels)[0].flatten(0, 1)[keep].to(model.device)  # (n, 3)
        keyframe = _Keyframe(
            update_index=self.num_updates,
            frame_index=index,
            timestamp_s=timestamp_s,
            vision_features=vision[0],
            camera_tokens=out.camera_tokens[0],
            patch_tokens=out.patch_tokens[0],
            pose=None if out.poses is None else out.poses[0],
            points=points,
            point_colors=colors,
            point_confidence=confidence,
        )
        return keyframe, state

    def _retain(self, keyframe: _Keyframe) -> None:
        """Adds the latest update and thins the set to the retention rule (module docstring)."""
        u = keyframe.update_index
        while self._retained_count(u, self.stride) > self.policy.max_keyframes:
            self.stride *= 2
        self.keyframes = [k for k in self.keyframes if k.update_index % self.stride == 0] + [keyframe]

    @staticmethod
    def _retained_count(u: int, stride: int) -> int:
        """|{v <= u : v % stride == 0} | {u}|."""
        return u // stride + 1 + (1 if u % stride else 0)

    # Reading ---------------------------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        """The latest timestamp plus the interval before it (the last frame's display time), so a
        video pushed frame by frame at a constant rate reports its file duration; 0 before any frame."""
        if self.last_timestamp_s is None:
            return 0.0
        interval = 0.0 if self.previous_timestamp_s is None else self.last_timestamp_s - self.previous_timestamp_s
        return self.last_timestamp_s + interval

    def features(self, duration_s: float | None = None) -> LiveFeatures:
        """The LLM inputs of the retained keyframes.

        Args:
            duration_s: the stream's duration for the prompt; default `self.duration_s`.
        """
        if not self.keyframes:
            raise ValueError("the session has no keyframe yet: push a frame first")
        features = VideoFeatures(
            vision_features=self._stack("vision_features")[None],  # (1, T, P, Cv)
            camera_tokens=self._stack("camera_tokens")[None],  # (1, T, 1, Cs)
            patch_tokens=self._stack("patch_tokens")[None],  # (1, T, N, Cs)
            frame_mask=torch.ones(1, len(self.keyframes), dtype=torch.bool, device=self.model.device),
        )
        return LiveFeatures(
            features=features,
            timestamps=tuple(k.timestamp_s for k in self.keyframes),
            frame_indices=tuple(k.frame_index for k in self.keyframes),
            duration_s=self.duration_s if duration_s is None else float(duration_s),
        )

    def _stack(self, name: str) -> torch.Tensor:
        """One field of every retained keyframe stacked along a new first axis (T, ...)."""
        return torch.stack([getattr(k, name) for k in self.keyframes])

    def trajectory(self) -> CameraTrajectory:
        """Camera-to-world poses of the retained keyframes (needs CUT3R's pose head)."""
        if not self.keyframes or self.keyframes[0].pose is None:
            raise ValueError("no keyframe poses: push a frame first, with a CUT3R that has its pose head")
        return CameraTrajectory.from_poses(
            self._stack("pose"), [k.timestamp_s for k in self.keyframes], [k.frame_index for k in self.keyframes]
        )  # poses (T, 7)

    def reconstruct(self, config: ReconstructionConfig | None = None) -> Reconstruction:
        """The point cloud of the retained keyframes' points (at most K * n before voxel averaging)
        and their trajectory. Needs CUT3R's point heads and `points_per_keyframe > 0`.
        ``config.max_points_per_frame`` does not apply: the policy chose the points at push time."""
        if not self.keyframes or self.keyframes[0].points is None:
            raise ValueError(
                "no keyframe points: the session needs a CUT3R with point heads "
                "(Cut3rConfig.enable_point_heads) and KeyframePolicy.points_per_keyframe > 0"
            )
        points, colors, confidence = (
            self._stack(name).flatten(0, 1).cpu().numpy() for name in ("points", "point_colors", "point_confidence")
        )  # (T * n, 3), (T * n, 3), (T * n,)
        cloud = build_point_cloud(points, colors, confidence, config or ReconstructionConfig())
        return Reconstruction(cloud, self.trajectory())

    # Memory ----------------------------------------------------------------------------------------

    def memory_bytes(self) -> int:
        """Bytes of the tensors the session holds: state tokens, pose memory, counter, keyframes."""
        held = [self.state.state_tokens, self.state.pose_memory, self.state.frames_seen]
        held += [t for k in self.keyframes for t in k.tensors()]
        return sum(t.numel() * t.element_size() for t in held)

    @staticmethod
    def memory_bound_bytes(model: Vlm3rForConditionalGeneration, policy: KeyframePolicy) -> int:
        """The most `memory_bytes` can reach with this model and policy (module docstring formula)."""
        cfg, c3 = model.config, model.config.cut3r
        b = torch.empty((), dtype=cfg.torch_dtype).element_size()
        n_patches = (cfg.cut3r_image_size // c3.patch_size) ** 2
        p = (cfg.siglip_image_size // cfg.vision["patch_size"]) ** 2
        state = (c3.state_size * c3.dec_embed_dim + c3.pose_memory_size * 2 * c3.dec_embed_dim) * b + 8
        keyframe = (p * cfg.vision["hidden_size"] + (1 + n_patches) * c3.dec_embed_dim) * b
        keyframe += 7 * 4 if c3.enable_pose_head else 0
        if c3.enable_point_heads:
            n = len(subsample_pixels(cfg.cut3r_image_size**2, policy.points_per_keyframe))
            keyframe += n * (3 * 4 + 3 + 4) if policy.points_per_keyframe else 0
        return state + policy.max_keyframes * keyframe

    # Snapshots -------------------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        """The whole session as one safetensors file (format in the module docstring)."""
        tensors = {
            "state.state_tokens": self.state.state_tokens,
            "state.pose_memory": self.state.pose_memory,
            "state.frames_seen": self.state.frames_seen,
        }
        if self.keyframes:
            first = self.keyframes[0]
            for name in _KEYFRAME_TENSORS:
                if getattr(first, name) is not None:
                    tensors[f"keyframes.{name}"] = self._stack(name)
        session = {
            "session_id": self.session_id,
            "policy": dataclasses.asdict(self.policy),
            "model": _model_settings(self.model),
            "stride": self.stride,
            "num_pushed": self.num_pushed,
            "num_updates": self.num_updates,
            "last_update_frame": self.last_update_frame,
            "last_update_timestamp_s": None if self.num_updates == 0 else self.last_update_timestamp_s,
            "last_timestamp_s": self.last_timestamp_s,
            "previous_timestamp_s": self.previous_timestamp_s,
            "keyframes": [
                {"update_index": k.update_index, "frame_index": k.frame_index, "timestamp_s": k.timestamp_s}
                for k in self.keyframes
            ],
        }
        # One metadata key: safetensors writes its metadata map in no fixed order, and one key keeps
        # a session's snapshot the same bytes every time.
        metadata = {SNAPSHOT_FORMAT: json.dumps({"format": SNAPSHOT_FORMAT, "version": SNAPSHOT_VERSION, **session})}
        cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        return safetensors.torch.save(cpu, metadata=metadata)

    @classmethod
    def restore(cls, model: Vlm3rForConditionalGeneration, data: bytes) -> LiveSession:
        """A session from `snapshot` bytes, on `model`'s device; it continues exactly as the original.

        Raises:
            ValueError: not a session snapshot, an unknown version, or a model whose settings
                differ from the snapshot's (CUT3R config, image sizes, SigLIP config, dtype).
        """
        metadata = _safetensors_metadata(data)
        if SNAPSHOT_FORMAT not in metadata:
            raise ValueError(f"not a live-session snapshot (no {SNAPSHOT_FORMAT!r} metadata)")
        session = json.loads(metadata[SNAPSHOT_FORMAT])
        if session.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"live-session snapshot version {session.get('version')!r}, expected {SNAPSHOT_VERSION}")
        settings = _model_settings(model)
        if session["model"] != settings:
            changed = sorted(k for k in settings if session["model"].get(k) != settings[k])
            raise ValueError(f"the snapshot was made with another model: {', '.join(changed)} differ")
        tensors = {k: v.to(model.device) for k, v in safetensors.torch.load(data).items()}

        out = cls(model, KeyframePolicy(**session["policy"]), session["session_id"])
        out.state = Cut3rState(
            tensors["state.state_tokens"], tensors["state.pose_memory"], tensors["state.frames_seen"]
        )
        out.stride, out.num_pushed, out.num_updates = session["stride"], session["num_pushed"], session["num_updates"]
        out.last_update_frame = session["last_update_frame"]
        last_update = session["last_update_timestamp_s"]
        out.last_update_timestamp_s = -math.inf if last_update is None else last_update
        out.last_timestamp_s, out.previous_timestamp_s = session["last_timestamp_s"], session["previous_timestamp_s"]
        out.keyframes = [
            _Keyframe(
                update_index=k["update_index"],
                frame_index=k["frame_index"],
                timestamp_s=k["timestamp_s"],
                # A copy per keyframe, so that dropping one frees its memory.
                **{
                    name: tensors[f"keyframes.{name}"][i].clone() if f"keyframes.{name}" in tensors else None
                    for name in _KEYFRAME_TENSORS
                },
            )
            for i, k in enumerate(session["keyframes"])
        ]
        return out

    def save(self, uri: str) -> None:
        """Writes `snapshot()` to a storage URI (local path, ``file://``, ``s3://``), atomically."""
        storage.write_bytes(uri, self.snapshot())

    @classmethod
    def load(cls, model: Vlm3rForConditionalGeneration, uri: str) -> LiveSession:
        """Restores a session written by `save`."""
        return cls.restore(model, storage.read_bytes(uri))


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file: an 8-byte little-endian header length, then JSON."""
    if len(data) < 8:
        raise ValueError("not a safetensors file (too short)")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ValueError("not a safetensors file (header length past the end)")
    try:
        header = json.loads(data[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"not a safetensors file ({e})") from e
    return header.get("__metadata__") or {}
