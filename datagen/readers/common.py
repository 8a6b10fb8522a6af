"""Types and constants every dataset reader shares; the work is split by topic:

- :mod:`~datagen.readers.files`: JSON, matrices, images and numbered files, with clear errors;
- :mod:`~datagen.readers.ply`: a small PLY reader (ascii and binary) for triangle meshes, so meshes
  can come from any storage URI and a truncated file names itself;
- :mod:`~datagen.readers.boxes`: gravity-aligned minimal boxes of instance points, annotated
  oriented boxes, and the room (floor height, ceiling height, floor polygon) from the mesh;
- :mod:`~datagen.readers.instances`: per-triangle instance labels and the ray-cast
  :class:`~datagen.readers.instances.VisibilityRenderer`;
- :mod:`~datagen.readers.frames`: candidate frames, dropping non-finite poses, the scene's video
  frames (source images or a source video, decoded through :mod:`vlm3r_core.video`) and
  :func:`~datagen.readers.frames.build_result`.

Every reader turns one source scene into a :class:`vlm3r_core.scene.Scene` plus the list of images
(or source-video frames) that become the scene's ``video.mp4``.

Conventions: world metres, Z up; cameras OpenCV (x right, y down, z forward); ``cam_to_world`` 4x4.
Shapes: ``V`` mesh vertices, ``F`` triangles, ``N`` points, ``H`` x ``W`` image pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vlm3r_core.scene import Scene

logger = logging.getLogger("datagen.readers")

STRUCTURE_LABELS = frozenset({"wall", "walls", "floor", "ceiling"})  # room structure, not objects
MIN_EXTENT_M = 0.01  # boxes are at least 1 cm along every axis
FOOTPRINT_CELL_M = 0.1  # grid cell of the floor footprint
VISIBILITY_MAX_SIDE = 256  # instance masks are ray-cast at most this many pixels wide/high
DROP_NON_FINITE_POSE = "non-finite pose"
VIDEO_FILE = "video.mp4"  # the scene's video, beside scene.json


class SourceFormatError(ValueError):
    """A source file that is malformed or truncated; the message names the file and the reason."""

    def __init__(self, uri: str, reason: str):
        self.uri, self.reason = uri, reason
        super().__init__(f"{uri}: {reason}")


@dataclass(frozen=True)
class ReadResult:
    """One source scene read into the scene contract.

    Attributes:
        scene: the validated scene; ``video.uri`` is ``video.mp4`` beside ``scene.json``.
        frames_dropped: source frames left out (non-finite pose, no pose for the image, ...).
        drop_reasons: ``{reason: count}``, summing to ``frames_dropped``.
        frame_images: one image URI per scene frame, in video order (empty when the frames come
            from ``source_video``).
        source_video: a source video whose frames ``source_video_frames`` (0-based decode order)
            become the scene's video frames, in order.
        source_video_frames: see ``source_video``.
        objects_skipped: annotated instances left out (no geometry or an invalid box).
        quarter_turns: every source image is turned by ``np.rot90(image, quarter_turns)``
            (counter-clockwise quarter turns) before it becomes a video frame; the frames' cameras
            already describe the turned image (ARKitScenes frames turned upright).
    """

    scene: Scene
    frames_dropped: int
    drop_reasons: dict[str, int]
    frame_images: tuple[str, ...] = ()
    source_video: str | None = None
    source_video_frames: tuple[int, ...] = ()
    objects_skipped: int = 0
    quarter_turns: int = 0

    def __post_init__(self):
        if self.quarter_turns not in (0, 1, 2, 3):
            raise ValueError(
                f"scene {self.scene.scene_id!r}: quarter_turns must be 0..3, got {self.quarter_turns}"
            )
        n = len(self.scene.frames)
        sources = len(self.frame_images) if self.source_video is None else len(self.source_video_frames)
        if sources != n:
            raise ValueError(f"scene {self.scene.scene_id!r}: {sources} frame sources for {n} frames")
        if sum(self.drop_reasons.values()) != self.frames_dropped:
            raise ValueError(
                f"scene {self.scene.scene_id!r}: drop reasons {self.drop_reasons} != {self.frames_dropped}"
            )
