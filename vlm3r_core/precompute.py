"""Token precompute: the stages that turn videos into token shards, as plain callables.

``jobs/precompute_tokens.py`` runs them on Ray Data (decoding as CPU tasks, encoding on an actor
pool); here they run without Ray, so tests call them directly.

1. :func:`list_videos` lists the scenes (``.../<dataset>/<scene_id>/scene.json``) under a folder,
   or the rows of a JSONL video list, each with its ``video_id`` "<dataset>/<scene_id>".
2. :func:`decode_videos` decodes each video and samples T frames by the one rule of
   :func:`vlm3r_core.video.sample_frame_indices`; an unreadable scene or video becomes an error
   record with the reason instead of frames.
3. :class:`TokenEncoder` loads the frozen encoders once, encodes a batch of videos (CUT3R patch
   and camera tokens and poses; SigLIP penultimate features when asked) and writes them as one
   token shard (:mod:`vlm3r_core.tokens`) before returning one small record per video, so a video
   is reported done only once its shard is durably written.
4. :class:`PrecomputeRecorder` (driver side) turns those records into ``manifest.jsonl`` and
   ``errors.jsonl``.

Shapes: ``B`` videos, ``T`` frames, ``H`` x ``W`` pixels, ``G`` CUT3R input side, ``N`` CUT3R patches,
``C`` CUT3R width, ``S`` SigLIP input side, ``P`` SigLIP patches, ``Cv`` SigLIP width.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from vlm3r_core import storage
from vlm3r_core.scene import SCENE_FILE, read_scene
from vlm3r_core.tokens import (
    EncoderInfo,
    ManifestEntry,
    TokenError,
    VideoTokens,
    shard_name,
    write_errors,
    write_manifest,
    write_token_shard,
)
from vlm3r_core.video import read_video

# The model package (transformers, peft) is imported only where a model is built, so the decode
# tasks, which import this module on every Ray worker, start in a fraction of the time.
if TYPE_CHECKING:
    from transformers import SiglipVisionModel

    from vlm3r_core.geometry import Cut3r
    from vlm3r_core.vlm import Vlm3rConfig

__all__ = [
    "PrecomputeRecorder",
    "TokenEncoder",
    "VideoSource",
    "decode_videos",
    "encoder_info",
    "list_videos",
    "load_frozen_encoders",
    "model_config",
]


@dataclass(frozen=True)
class VideoSource:
    """One video to encode: its id and either its scene folder or the video URI itself."""

    video_id: str
    scene: str = ""
    video: str = ""


def list_videos(uri: str) -> list[VideoSource]:
    """Lists the videos to encode, sorted by id.

    Args:
        uri: a folder holding ``<dataset>/<scene_id>/scene.json`` anywhere below it (a data root,
            its ``scenes/`` folder or one dataset's folder; the video URI is read from each scene
            at decode time), or a ``.jsonl`` file whose rows have ``video_id``
            ("<dataset>/<scene_id>") and ``video`` (a URI, relative ones relative to the file).

    Raises:
        ValueError: a JSONL row without ``video_id`` or ``video``, or an id listed twice.
        FileNotFoundError: no scene or video at ``uri``.
    """
    if uri.endswith(".jsonl"):
        base = uri.rsplit("/", 1)[0] if "/" in uri else "."
        sources = []
        for n, row in enumerate(storage.read_jsonl(uri), start=1):
            if not row.get("video_id") or not row.get("video"):
                raise ValueError(f"{uri}: line {n} needs 'video_id' and 'video', got keys {sorted(row)}")
            video = row["video"]
            if "://" not in video and not video.startswith("/"):
                video = storage.join(base, video)
            sources.append(VideoSource(video_id=row["video_id"], video=video))
    else:
        suffix = "/" + SCENE_FILE
        scene_dirs = [u[: -len(suffix)] for u in storage.list_files(uri, suffix)]
        # .../<dataset>/<scene_id>/scene.json: the two folder names are the video id (DESIGN.md).
        sources = [VideoSource(video_id="/".join(d.split("/")[-2:]), scene=d) for d in scene_dirs]
    if not sources:
        raise FileNotFoundError(f"{uri}: no videos (no <dataset>/<scene_id>/{SCENE_FILE} below it, or an empty list)")
    ids = sorted(s.video_id for s in sources)
    duplicates = sorted({a for a, b in zip(ids[:-1], ids[1:], strict=True) if a == b})
    if duplicates:
        raise ValueError(f"{uri}: video ids listed more than once: {duplicates}")
    return sorted(sources, key=lambda s: s.video_id)


def decode_videos(batch: dict[str, np.ndarray], num_frames: int) -> dict[str, np.ndarray]:
    """Ray Data stage (CPU task): decodes each video and samples ``num_frames`` frames.

    Args:
        batch: columns ``video_id``, ``scene`` (scene folder URI or ""), ``video`` (URI or "").
        num_frames: T, frames sampled per video.

    Returns:
        Per video: ``video_id``, ``video`` (the URI decoded), ``error`` ("" or the reason),
        ``frames`` (T, H, W, 3) uint8, ``frame_indices`` (T,) int64, ``timestamps`` (T,) float64,
        ``duration_s``. A failed video has ``error`` set and no frames (T = 0).
    """
    out = {k: [] for k in ("video_id", "video", "error", "frames", "frame_indices", "timestamps", "duration_s")}
    for video_id, scene_uri, video_uri in zip(batch["video_id"], batch["scene"], batch["video"], strict=True):
        video_id, video_uri = str(video_id), str(video_uri)
        try:
            if scene_uri:
                video_uri = read_scene(str(scene_uri)).video_uri(str(scene_uri))
            decoded = read_video(video_uri, num_samples=num_frames)
        except (ValueError, OSError) as e:  # VideoDecodeError, SceneValidationError, bad JSON, missing file
            reason = f"{type(e).__name__}: {e}"
            frames = np.zeros((0, 0, 0, 3), np.uint8)
            indices, times, duration = np.zeros(0, np.int64), np.zeros(0, np.float64), 0.0
        else:
            reason = ""
            frames, indices, times = decoded.frames, decoded.frame_indices, decoded.timestamps
            duration = decoded.duration_s
        out["video_id"].append(video_id)
        out["video"].append(video_uri)
        out["error"].append(reason)
        out["frames"].append(frames)
        out["frame_indices"].append(indices)
        out["timestamps"].append(times)
        out["duration_s"].append(duration)
    return {k: _column(v) for k, v in out.items()}


def _column(values: list) -> np.ndarray:
    """A batch column: stacked when the arrays share a shape, else an object array of arrays."""
    if isinstance(values[0], np.ndarray) and len({v.shape for v in values}) > 1:
        column = np.empty(len(values), dtype=object)
        column[:] = values
        return column
    return np.stack(values) if isinstance(values[0], np.ndarray) else np.array(values)


def model_config(preset: str, checkpoint: str | None = None, size: int | None = None, num_frames: int | None = None) -> Vlm3rConfig:
    """The preset's model config with the precompute overrides (CUT3R weights, size, frames)."""
    from vlm3r_core.presets import get_preset

    overrides = {}
    if checkpoint:
        overrides["cut3r_weights"] = checkpoint
    if size is not None:
        overrides["cut3r_image_size"] = size
    if num_frames is not None:
        overrides["num_frames"] = num_frames
    return get_preset(preset, **overrides)


def encoder_info(cfg: Vlm3rConfig, with_vision_features: bool, dtype: str = "float16") -> EncoderInfo:
    """What a shard set made with ``cfg`` is stamped with (and named after)."""
    return EncoderInfo(
        preset=cfg.name,
        checkpoint=cfg.cut3r_weights or "",
        image_size=cfg.cut3r_image_size,
        num_frames=cfg.num_frames,
        vision_image_size=cfg.siglip_image_size if with_vision_features else 0,
        dtype=dtype,
    )


def load_frozen_encoders(
    cfg: Vlm3rConfig, device: torch.device, with_vision_features: bool = True
) -> tuple[SiglipVisionModel | None, Cut3r]:
    """SigLIP (all but its last block) and CUT3R, built exactly as training and serving build them.

    Only these parts of the VLM are built (``from_config(..., components=...)``, whose per-part
    seeded init makes presets without weights, like ``tiny``, give the same encoders here as in
    training and serving), with their base weights, on ``device``. SigLIP is None without
    ``with_vision_features``.
    """
    from vlm3r_core.vlm import Vlm3rForConditionalGeneration

    components = ("vision_tower", "cut3r") if with_vision_features else ("cut3r",)
    model = Vlm3rForConditionalGeneration.from_config(cfg, device=device, components=components)
    return model.vision_tower, model.cut3r


class TokenEncoder:
    """Ray Data stage (actor): encodes batches of decoded videos and writes each batch as a shard.

    Frames are squash-resized to the encoders' square inputs and normalised with mean = std = 0.5
    by the processor's :func:`vlm3r_core.vlm.processor.resize_frames`; CUT3R gives the patch and
    camera tokens (and poses when its pose head is on), SigLIP the penultimate-layer features,
    exactly as ``Vlm3rForConditionalGeneration.encode_frames`` computes them.

    Args:
        cfg: the model config (``model_config``); the encoders are built and loaded once, here.
        encoder: the shard set's :class:`EncoderInfo` (``encoder_info(cfg, ...)``).
        out_dir: the shard set folder, ``token_dir(root, encoder)``.
        device: torch device; None picks CUDA when visible, else CPU.
    """

    def __init__(self, cfg: Vlm3rConfig, encoder: EncoderInfo, out_dir: str, device: str | None = None):
        if encoder != encoder_info(cfg, encoder.with_vision_features, encoder.dtype):
            raise ValueError(f"encoder {encoder.name} does not match the model config of preset {cfg.name!r}")
        self.cfg, self.encoder, self.out_dir = cfg, encoder, out_dir
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.vision_tower, self.cut3r = load_frozen_encoders(cfg, self.device, encoder.with_vision_features)

    @torch.inference_mode()
    def encode(self, videos: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Encodes B videos with the same number of frames T.

        Args:
            videos: B arrays (T, H, W, 3) uint8 RGB; H and W may differ between videos.

        Returns:
            Per video, float32 numpy: ``camera_tokens`` (T, 1, C), ``patch_tokens`` (T, N, C),
            ``poses`` (T, 7) when CUT3R's pose head is on, ``vision_features`` (T, P, Cv) when the
            encoder stores them.
        """
        from vlm3r_core.vlm.model import siglip_features
        from vlm3r_core.vlm.processor import resize_frames

        if len({v.shape[0] for v in videos}) != 1:
            raise ValueError(f"videos of one batch must have the same frame count, got {[v.shape[0] for v in videos]}")
        dtype = self.cfg.torch_dtype
        frames = [torch.tensor(v, device=self.device) for v in videos]  # B x (T, H, W, 3) uint8
        pixels = torch.stack([resize_frames(f, self.cfg.cut3r_image_size) for f in frames])  # (B, T, 3, G, G)
        geometry = self.cut3r.encode_video(pixels.to(dtype))
        out = [
            {
                "camera_tokens": geometry.camera_tokens[b].float().cpu().numpy(),  # (T, 1, C)
                "patch_tokens": geometry.patch_tokens[b].float().cpu().numpy(),  # (T, N, C)
            }
            for b in range(len(videos))
        ]
        if geometry.poses is not None:
            for b, row in enumerate(out):
                row["poses"] = geometry.poses[b].float().cpu().numpy()  # (T, 7)
        if self.encoder.with_vision_features:
            siglip = torch.cat([resize_frames(f, self.cfg.siglip_image_size) for f in frames]).to(dtype)  # (B*T, 3, S, S)
            hidden = siglip_features(self.vision_tower, siglip)  # (B*T, P, Cv), penultimate layer
            hidden = hidden.view(len(videos), -1, *hidden.shape[1:])  # (B, T, P, Cv)
            for b, row in enumerate(out):
                row["vision_features"] = hidden[b].float().cpu().numpy()
        return out

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Encodes the decoded videos of ``batch`` (from :func:`decode_videos`) into one shard.

        Returns:
            One record per input video: ``video_id``, ``video``, ``error`` (the decode reason, or
            ""), ``shard`` (file name in ``out_dir``; "" for failures), ``shard_bytes`` (size of
            that shard; 0 for failures).
        """
        n = len(batch["video_id"])
        ok = [i for i in range(n) if not batch["error"][i]]
        shard, nbytes = "", 0
        if ok:
            for i in ok:
                if len(batch["frames"][i]) != self.encoder.num_frames:
                    raise ValueError(
                        f"{batch['video_id'][i]}: {len(batch['frames'][i])} frames, the encoder wants {self.encoder.num_frames}"
                    )
            encoded = self.encode([batch["frames"][i] for i in ok])
            videos = [
                VideoTokens(
                    video_id=str(batch["video_id"][i]),
                    frame_indices=np.asarray(batch["frame_indices"][i], np.int64),
                    timestamps=np.asarray(batch["timestamps"][i], np.float64),
                    duration_s=float(batch["duration_s"][i]),
                    **tokens,
                )
                for i, tokens in zip(ok, encoded, strict=True)
            ]
            shard = shard_name(v.video_id for v in videos)
            nbytes = write_token_shard(storage.join(self.out_dir, shard), videos, self.encoder)
        done = set(ok)
        return {
            "video_id": np.array([str(v) for v in batch["video_id"]], dtype=object),
            "video": np.array([str(v) for v in batch["video"]], dtype=object),
            "error": np.array([str(e) for e in batch["error"]], dtype=object),
            "shard": np.array([shard if i in done else "" for i in range(n)], dtype=object),
            "shard_bytes": np.array([nbytes if i in done else 0 for i in range(n)], dtype=np.int64),
        }


class PrecomputeRecorder:
    """Driver side of a run: records :class:`TokenEncoder` results in the manifest and errors file.

    The manifest is rewritten at most every ``write_interval_s`` seconds and on :meth:`close`; a
    run stopped in between leaves shards the manifest does not list yet, which
    :func:`vlm3r_core.tokens.reconcile_manifest` adopts at the start of the next run.

    Args:
        out_dir: the shard set folder.
        done: the manifest at the start of the run (``reconcile_manifest(out_dir)``).
        write_interval_s: least time between two manifest writes.
    """

    def __init__(self, out_dir: str, done: Mapping[str, ManifestEntry], write_interval_s: float = 30.0):
        self.out_dir, self.write_interval_s = out_dir, write_interval_s
        self.manifest = dict(done)
        self.errors: list[TokenError] = []
        self.shard_bytes: dict[str, int] = {}
        self.encoded = 0
        self._last_write = time.monotonic()

    def add(self, records: Mapping[str, Sequence]) -> None:
        """Records one batch of :meth:`TokenEncoder.__call__` output."""
        rows = zip(records["video_id"], records["video"], records["error"], records["shard"], records["shard_bytes"], strict=True)
        for video_id, video, error, shard, nbytes in rows:
            if error:
                self.errors.append(TokenError(str(video_id), str(video), str(error)))
            else:
                self.manifest[str(video_id)] = ManifestEntry(str(video_id), str(shard))
                self.shard_bytes[str(shard)] = int(nbytes)
                self.encoded += 1
        if time.monotonic() - self._last_write >= self.write_interval_s:
            self.write_manifest()

    def write_manifest(self) -> None:
        write_manifest(self.out_dir, self.manifest.values())
        self._last_write = time.monotonic()

    def close(self) -> None:
        """Writes the manifest and this run's errors (an empty file when none failed)."""
        self.write_manifest()
        write_errors(self.out_dir, self.errors)

    @property
    def bytes_written(self) -> int:
        return sum(self.shard_bytes.values())
