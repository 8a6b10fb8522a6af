"""Token precompute: the stages that turn videos into token shards, as plain callables.

``jobs/precompute_tokens.py`` runs them on Ray Data (decoding as CPU tasks, encoding on an actor
pool); here they run without Ray, so tests call them directly.

1. :func:`list_videos` lists the scenes (``.../<dataset>/<scene_id>/scene.json``) under a folder,
   or the rows of a JSONL video list, each with its ``video_id`` "<dataset>/<scene_id>".
2. :func:`decode_videos` checks each scene's video against its ``scene.json``, decodes it and
   samples T frames by the one rule of :func:`vlm3r_core.video.sample_frame_indices`; an
   unreadable or mismatched scene or video becomes an error record with the reason instead of frames.
3. :class:`TokenEncoder` builds the frozen encoders once and encodes a batch of videos through
   the model's own ``encode_frames`` (the one encoder path, shared with evaluation and serving:
   CUT3R patch and camera tokens and poses; SigLIP penultimate features when asked), and writes
   them as one token shard (:mod:`vlm3r_core.tokens`) before returning one small record per
   video, so a video is reported done only once its shard is durably written; a failed write
   becomes error records, not a failed run.

The driver records the results in the run ledger (:mod:`vlm3r_core.ledger`): ``manifest.jsonl``
and ``errors.jsonl`` of the shard set, started from :func:`vlm3r_core.tokens.reconcile_manifest`.

Shapes: ``B`` videos, ``T`` frames, ``H`` x ``W`` pixels, ``G`` CUT3R input side, ``N`` CUT3R patches,
``C`` CUT3R width, ``S`` SigLIP input side, ``P`` SigLIP patches, ``Cv`` SigLIP width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from vlm3r_core import storage
from vlm3r_core.geometry.reconstruction import ReconstructionConfig, reconstruct_video
from vlm3r_core.ledger import error_reason
from vlm3r_core.scene import SCENE_FILE, list_scenes, read_scene, verify_video
from vlm3r_core.tokens import TOKEN_DTYPES, EncoderInfo, VideoTokens, shard_name, write_token_shard
from vlm3r_core.video import read_video

# The model package (transformers, peft) is imported only where a model is built, so the decode
# tasks, which import this module on every Ray worker, start in a fraction of the time.
if TYPE_CHECKING:
    from vlm3r_core.vlm import Vlm3rConfig

__all__ = [
    "PrecomputeConfig",
    "TokenEncoder",
    "VideoSource",
    "decode_videos",
    "encoder_info",
    "list_videos",
    "model_config",
]


@dataclass(frozen=True)
class PrecomputeConfig:
    """A token precompute run.

    Args:
        scenes: folder URI with ``<dataset>/<scene_id>/scene.json`` (a data root, its ``scenes/``
            or one dataset), or a ``.jsonl`` list of ``{"video_id", "video"}``.
        out: output root URI (writes ``<out>/tokens/<encoder>/``).
        preset: model preset (``vlm3r_core.presets``): tiny, vlm3r-7b.
        checkpoint: CUT3R checkpoint URI (default: the preset's).
        num_frames: frames sampled per video (default: the preset's, 32).
        size: CUT3R input side in pixels (default: the preset's, 432 for vlm3r-7b).
        with_vision_features: also store SigLIP features (needed to train).
        dtype: storage dtype of the tokens.
        batch_size: videos per encoder call and per shard.
        num_actors: encoder actors (default: one per GPU, or 1 without GPUs).
        export_3d: also write each video's CUT3R reconstruction of its sampled frames
            (``points.ply``, ``points.glb``, ``trajectory.json``; ``Reconstruction.write``) under
            ``<out>/reconstructions/<dataset>/<scene_id>/``; CUT3R is then built with its point
            heads (the tokens are the same).
        export_confidence: the export's confidence threshold (>= 1; 1 keeps every point: an
            untrained CUT3R, such as the tiny preset's, is never confident).
    """

    scenes: str
    out: str
    preset: str = "tiny"
    checkpoint: str | None = None
    num_frames: int | None = None
    size: int | None = None
    with_vision_features: bool = False
    dtype: Literal["float16", "float32"] = "float16"
    batch_size: int = 4
    num_actors: int | None = None
    export_3d: bool = False
    export_confidence: float = 3.0

    def __post_init__(self):
        ReconstructionConfig(confidence_threshold=self.export_confidence)  # < 1: ValueError
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.num_actors is not None and self.num_actors < 1:
            raise ValueError(f"num_actors must be >= 1, got {self.num_actors}")
        if self.dtype not in TOKEN_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(TOKEN_DTYPES)}, got {self.dtype!r}")
        if self.num_frames is not None and self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.size is not None and (self.size < 16 or self.size % 16):
            raise ValueError(f"size must be a multiple of 16 (CUT3R's patch size), got {self.size}")
        model_config(self.preset, self.checkpoint, self.size, self.num_frames)  # unknown preset: ValueError


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
        sources = [VideoSource(video_id=ref.video_id, scene=ref.dir) for ref in list_scenes(uri)]
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
            scene = None
            if scene_uri:
                scene = read_scene(str(scene_uri))
                video_uri = scene.video_uri(str(scene_uri))
                verify_video(scene, str(scene_uri))  # the container header: frame count and size
            decoded = read_video(video_uri, num_samples=num_frames)
            if scene is not None and decoded.num_frames != scene.video.num_frames:
                raise ValueError(
                    f"{video_uri}: decoded {decoded.num_frames} frames, scene.json says {scene.video.num_frames}"
                )
        except (ValueError, OSError) as e:  # VideoDecodeError, SceneValidationError, bad JSON, missing file
            reason = error_reason(e)
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


class TokenEncoder:
    """Ray Data stage (actor): encodes batches of decoded videos and writes each batch as a shard.

    Only the frozen encoders of the VLM are built (``from_config(..., components=...)``, whose
    per-part seeded init makes presets without weights, like ``tiny``, give the same encoders here
    as in training and serving), and videos go through the model's own ``encode_frames``: frames
    squash-resized to the encoders' square inputs and normalised with mean = std = 0.5
    (:func:`vlm3r_core.vlm.processor.frame_pixels`), CUT3R patch and camera tokens (and poses when
    its pose head is on), SigLIP penultimate features when the shard set stores them.

    Args:
        cfg: the model config (``model_config``); the encoders are built and loaded once, here.
        encoder: the shard set's :class:`EncoderInfo` (``encoder_info(cfg, ...)``).
        out_dir: the shard set folder, ``token_dir(root, encoder)``.
        device: torch device; None picks CUDA when visible, else CPU.
    """

    def __init__(
        self,
        cfg: Vlm3rConfig,
        encoder: EncoderInfo,
        out_dir: str,
        device: str | None = None,
        export_dir: str | None = None,
        export: ReconstructionConfig | None = None,
    ):
        from vlm3r_core.vlm import Vlm3rForConditionalGeneration

        if encoder != encoder_info(cfg, encoder.with_vision_features, encoder.dtype):
            raise ValueError(f"encoder {encoder.name} does not match the model config of preset {cfg.name!r}")
        self.cfg, self.encoder, self.out_dir = cfg, encoder, out_dir
        self.export_dir, self.export = export_dir, export
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        parts = ("vision_tower", "cut3r") if encoder.with_vision_features else ("cut3r",)
        if export_dir is not None:  # point heads for the export; the other CUT3R weights are the same
            cfg = cfg.with_cut3r_point_heads()
        self.model = Vlm3rForConditionalGeneration.from_config(cfg, device=self.device, components=parts)

    @torch.inference_mode()
    def encode(self, videos: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Encodes B videos (``model.encode_frames``).

        Args:
            videos: B arrays (T_b, H, W, 3) uint8 RGB; H, W and T_b may differ between videos.

        Returns:
            Per video, float32 numpy: ``camera_tokens`` (T, 1, C), ``patch_tokens`` (T, N, C),
            ``poses`` (T, 7) when CUT3R's pose head is on, ``vision_features`` (T, P, Cv) when the
            encoder stores them.
        """
        from vlm3r_core.vlm.processor import frame_pixels

        vision = self.cfg.siglip_image_size if self.encoder.with_vision_features else None
        feats = self.model.encode_frames(frame_pixels(videos, self.cfg.cut3r_image_size, vision))
        out = []
        for b, video in enumerate(videos):
            t = len(video)
            row = {
                "camera_tokens": feats.camera_tokens[b, :t].float().cpu().numpy(),  # (T, 1, C)
                "patch_tokens": feats.patch_tokens[b, :t].float().cpu().numpy(),  # (T, N, C)
            }
            if feats.poses is not None:
                row["poses"] = feats.poses[b, :t].float().cpu().numpy()  # (T, 7)
            if feats.vision_features is not None:
                row["vision_features"] = feats.vision_features[b, :t].float().cpu().numpy()  # (T, P, Cv)
            out.append(row)
        return out

    def export_3d(self, batch: dict[str, np.ndarray], i: int) -> str:
        """Writes video ``i``'s reconstruction under ``<export_dir>/<video_id>/``; "" or the reason it could not."""
        video_id = str(batch["video_id"][i])
        try:
            reconstruction = reconstruct_video(
                self.model.cut3r, batch["frames"][i], self.cfg.cut3r_image_size,
                np.asarray(batch["timestamps"][i]).tolist(), np.asarray(batch["frame_indices"][i]).tolist(), self.export,
            )  # fmt: skip
            reconstruction.write(storage.join(self.export_dir, video_id))
        except (ValueError, OSError) as e:  # no confident point, storage trouble
            return error_reason(e)
        return ""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Encodes the decoded videos of ``batch`` (from :func:`decode_videos`) into one shard.

        Returns:
            One record per input video: ``video_id``, ``video``, ``error`` (the decode or write
            failure, or ""), ``export_error`` (why its 3D export failed, or ""), ``shard`` (file name in ``out_dir``; "" for failures), ``shard_bytes``
            (size of that shard; 0 for failures).
        """
        n = len(batch["video_id"])
        errors = [str(e) for e in batch["error"]]
        for i in range(n):
            if not errors[i] and len(batch["frames"][i]) != self.encoder.num_frames:
                errors[i] = f"ValueError: {len(batch['frames'][i])} frames, the encoder wants {self.encoder.num_frames}"
        ok = [i for i in range(n) if not errors[i]]
        shard, nbytes = "", 0
        if ok:
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
            try:
                nbytes = write_token_shard(storage.join(self.out_dir, shard), videos, self.encoder)
            except Exception as e:  # noqa: BLE001 - storage failures are recorded per video, the run goes on
                for i in ok:
                    errors[i] = f"writing {shard}: {error_reason(e)}"
                ok, shard = [], ""
        done = set(ok)
        export_errors = [""] * n
        if self.export_dir is not None:
            for i in ok:
                export_errors[i] = self.export_3d(batch, i)
        return {
            "export_error": np.array(export_errors, dtype=object),
            "video_id": np.array([str(v) for v in batch["video_id"]], dtype=object),
            "video": np.array([str(v) for v in batch["video"]], dtype=object),
            "error": np.array(errors, dtype=object),
            "shard": np.array([shard if i in done else "" for i in range(n)], dtype=object),
            "shard_bytes": np.array([nbytes if i in done else 0 for i in range(n)], dtype=np.int64),
        }
