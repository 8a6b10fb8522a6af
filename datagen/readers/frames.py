"""A scene's frames and video from its source: candidate frames (pose, intrinsics, where the
pixels come from), dropping non-finite poses, the video frames in order (source images, or the
frames of a source video decoded through :mod:`vlm3r_core.video`), and the assembled
:class:`~datagen.readers.common.ReadResult`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from datagen.readers.common import ReadResult, SourceFormatError, logger
from datagen.readers.files import read_image
from datagen.readers.instances import VisibilityRenderer
from vlm3r_core.scene import Frame, Intrinsics, Room, Scene, SceneObject, VideoInfo, Visibility
from vlm3r_core.video import VideoDecodeError, iter_frames, probe_video

DROP_NON_FINITE_POSE = "non-finite pose"
VIDEO_FILE = "video.mp4"  # the scene's video, beside scene.json


@dataclass(frozen=True)
class SourceFrame:
    """A candidate frame: its pose and intrinsics plus where its pixels come from."""

    name: str  # how logs name it (file or key)
    cam_to_world: np.ndarray  # (4, 4), may be non-finite
    intrinsics: Intrinsics
    image: str | int  # image URI, or frame number in the source video
    visible: tuple[Visibility, ...] | None = None  # from the source's own instance mask; None: ray-cast


def assemble_frames(
    candidates: Sequence[SourceFrame],
    renderer: VisibilityRenderer,
    width: int,
    height: int,
    fps: float,
    drop_reasons: Counter,
) -> tuple[tuple[Frame, ...], tuple[SourceFrame, ...]]:
    """Keeps candidates with a finite pose, numbers them 0.. as video frames and adds visibility.

    Dropped frames are counted in ``drop_reasons[DROP_NON_FINITE_POSE]``. Timestamps are video
    time, ``index / fps``. Visibility is the candidate's own (from the source's instance masks)
    when it has one, else ``renderer`` ray-casts it.

    Returns:
        (frames, kept candidates), in video order.
    """
    frames, kept = [], []
    for cand in candidates:
        if not np.all(np.isfinite(cand.cam_to_world)):
            drop_reasons[DROP_NON_FINITE_POSE] += 1
            continue
        index = len(frames)
        frames.append(
            Frame(
                index=index,
                timestamp=index / fps,
                cam_to_world=cand.cam_to_world,
                intrinsics=cand.intrinsics,
                visible=cand.visible
                if cand.visible is not None
                else renderer.visible(cand.cam_to_world, cand.intrinsics, width, height),
            )
        )
        kept.append(cand)
    return tuple(frames), tuple(kept)


def even_size(width: int, height: int) -> tuple[int, int]:
    """Video size for an image size: H.264 (yuv420p) needs even sides, so an odd last row/column is cropped."""
    return width - width % 2, height - height % 2


def iter_video_frames(result: ReadResult) -> Iterator[np.ndarray]:
    """Yields the scene's video frames, (H, W, 3) uint8, in order: each image turned by
    ``result.quarter_turns``, then cropped to the video size."""
    w, h = result.scene.video.width, result.scene.video.height
    if result.source_video is None:
        for uri in result.frame_images:
            img = np.rot90(read_image(uri), result.quarter_turns)
            # the video is the image, less the last row/column of an odd side
            if img.shape[0] - h not in (0, 1) or img.shape[1] - w not in (0, 1):
                raise SourceFormatError(
                    uri, f"image is {img.shape[1]}x{img.shape[0]}, the scene's video is {w}x{h}"
                )
            yield np.ascontiguousarray(img[:h, :w])
        return
    yield from _decode_video_frames(
        result.source_video, result.source_video_frames, w, h, result.quarter_turns
    )


def _decode_video_frames(
    uri: str, wanted: Sequence[int], width: int, height: int, quarter_turns: int = 0
) -> Iterator[np.ndarray]:
    """The ``wanted`` frames (decode order) of a source video, turned and cropped to the scene's size."""
    try:
        for _, frame in iter_frames(uri, wanted):
            img = np.rot90(frame, quarter_turns)
            yield np.ascontiguousarray(img[:height, :width])
    except VideoDecodeError as e:
        raise SourceFormatError(uri, str(e).removeprefix(f"{uri}: ")) from e


def video_size(uri: str) -> tuple[int, int]:
    """``(width, height)`` of the first video stream of a video file (its container header)."""
    try:
        probe = probe_video(uri)
    except VideoDecodeError as e:
        if "no such video file" in str(e):
            raise FileNotFoundError(f"{uri}: no such file") from e
        raise SourceFormatError(uri, str(e).removeprefix(f"{uri}: ")) from e
    return probe.width, probe.height


def video_fps(times_s: Sequence[float]) -> int:
    """Integer frame rate of the output video from the capture times of the kept source frames."""
    steps = np.diff(np.asarray(times_s, dtype=np.float64))
    steps = steps[steps > 0]
    return max(1, round(1.0 / float(np.median(steps)))) if len(steps) else 1


def build_result(
    *,
    scene_id: str,
    dataset: str,
    split: str,
    source_uri: str,
    room: Room,
    objects: Sequence[SceneObject],
    objects_skipped: int,
    candidates: Sequence[SourceFrame],
    renderer: VisibilityRenderer,
    image_width: int,
    image_height: int,
    fps: int,
    drop_reasons: Counter,
    source_video: str | None = None,
    extra: dict[str, Any] | None = None,
    quarter_turns: int = 0,
) -> ReadResult:
    """Assembles frames (dropping non-finite poses), the video description and the scene.

    ``drop_reasons`` may already count frames the reader left out (no pose for an image, ...).
    ``image_width`` x ``image_height`` is the size after ``quarter_turns`` (see :class:`ReadResult`).
    The scene records where it came from under ``extra["source"]``.
    """
    width, height = even_size(image_width, image_height)
    frames, kept = assemble_frames(candidates, renderer, width, height, fps, drop_reasons)
    dropped = sum(drop_reasons.values())
    if not frames:
        raise SourceFormatError(source_uri, f"no usable frames: all {dropped} dropped ({dict(drop_reasons)})")
    if dropped:
        logger.warning(
            "%s/%s: dropped %d of %d frames (%s)",
            dataset,
            scene_id,
            dropped,
            dropped + len(frames),
            dict(drop_reasons),
        )
    source = {
        "uri": source_uri,
        "frames": [cand.name for cand in kept],
        "frames_dropped": dropped,
        "drop_reasons": dict(drop_reasons),
        "objects_skipped": objects_skipped,
        "visibility": {  # where each kept frame's ``visible`` came from
            "instance_masks": sum(cand.visible is not None for cand in kept),
            "ray_cast": sum(cand.visible is None for cand in kept),
        },
        **(extra or {}),
    }
    scene = Scene(
        scene_id=scene_id,
        dataset=dataset,
        split=split,
        room=room,
        objects=tuple(objects),
        video=VideoInfo(uri=VIDEO_FILE, fps=float(fps), num_frames=len(frames), width=width, height=height),
        frames=frames,
        extra={"source": source},
    )
    return ReadResult(
        scene=scene,
        frames_dropped=dropped,
        drop_reasons=dict(drop_reasons),
        frame_images=tuple(str(c.image) for c in kept) if source_video is None else (),
        source_video=source_video,
        source_video_frames=tuple(int(c.image) for c in kept) if source_video is not None else (),
        objects_skipped=objects_skipped,
        quarter_turns=quarter_turns,
    )
