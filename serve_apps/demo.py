"""The browser demo of the VLM-3R service, without Ray: its static files, the catalogue of bundled
demo videos (with generated benchmark questions), the sampled-frame preview and the 3D layout.

The ingress (``serve_apps/api.py``) serves these under ``/demo``; the page itself
(``serve_apps/static/``) is plain HTML, CSS and JavaScript that calls the OpenAI-compatible API.

Demo videos (``Vlm3rArgs.demo_videos``) are either a data root (``<root>/scenes/<dataset>/<scene>/``
with ``scene.json`` and the video; questions from the shards under ``<root>/qa/benchmark/``) or a folder of
video files (questions only from ``Vlm3rArgs.demo_questions``). Questions are benchmark rows
(:func:`vlm3r_core.evaluation.iter_benchmark`) matched to a video by its ``video`` URI or by
``<dataset>/<scene_name>``.
"""

from __future__ import annotations

import base64
import mimetypes
import posixpath
import threading
from dataclasses import dataclass, field
from pathlib import Path

from serve_apps.args import Vlm3rArgs
from serve_apps.openai_protocol import ApiError, fetch_video
from vlm3r_core import storage
from vlm3r_core.evaluation import BenchmarkRow, iter_benchmark
from vlm3r_core.point_cloud import scene_point_cloud
from vlm3r_core.scene import list_scenes, read_scene
from vlm3r_core.video import jpeg_thumbnail, read_video

STATIC_DIR = Path(__file__).resolve().parent / "static"
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".m4v")
MAX_DEMO_VIDEOS = 100  # the first ones (sorted) of a larger folder are offered
QUESTIONS_PER_TYPE = 3  # benchmark questions offered per video and question type
FRAME_THUMBNAIL_SIDE = 192


def static_file(name: str) -> tuple[bytes, str] | None:
    """(content, media type) of a file of the page, or None when there is no such file."""
    if "/" in name or "\\" in name or name.startswith("."):
        return None
    path = STATIC_DIR / name
    if not path.is_file():
        return None
    return path.read_bytes(), mimetypes.guess_type(name)[0] or "application/octet-stream"


@dataclass
class DemoVideo:
    """A bundled video: ``id`` is ``<dataset>/<scene>`` for a scene, else its path in the folder."""

    id: str
    uri: str | None  # None until the scene.json of a scene has been read
    scene_dir: str | None = None
    questions: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        return {"id": self.id, "has_layout": self.scene_dir is not None, "questions": self.questions}


def _question(row: BenchmarkRow) -> dict:
    return {
        "id": row.id,
        "question_type": row.question_type,
        "question": row.question,
        "options": list(row.options),
        "ground_truth": row.ground_truth,
        "mc_answer": row.mc_answer,
    }


class DemoCatalog:
    """The demo videos under a URI and the benchmark questions about each."""

    def __init__(self, videos: list[DemoVideo]):
        self.videos = {v.id: v for v in videos}

    @classmethod
    def load(cls, uri: str | None, questions: str | None = None) -> DemoCatalog:
        """Lists the videos under ``uri`` (a data root or a folder of videos; None: no videos)."""
        if not uri:
            return cls([])
        scenes = list_scenes(uri)[:MAX_DEMO_VIDEOS]
        scene_dirs = [ref.dir for ref in scenes]
        if scenes:
            videos = [DemoVideo(id=ref.video_id, uri=None, scene_dir=ref.dir) for ref in scenes]
        else:
            files = [u for u in storage.list_files(uri) if u.lower().endswith(VIDEO_SUFFIXES)][:MAX_DEMO_VIDEOS]
            videos = [DemoVideo(id=posixpath.splitext(posixpath.relpath(u, uri))[0], uri=u) for u in files]
        if questions:
            sources = [questions]
        elif scene_dirs and storage.list_files(storage.join(uri, "qa", "benchmark"), ".parquet"):
            sources = [storage.join(uri, "qa", "benchmark")]  # every split's shards, streamed
        else:
            sources = []
        catalog = cls(videos)
        by_uri = {storage.absolute(v.uri): v for v in videos if v.uri}
        rows = [
            row
            for source in sources
            for row in iter_benchmark(source)
            if row.video_id in catalog.videos or storage.absolute(row.video) in by_uri
        ]
        for row in sorted(rows, key=lambda r: (r.question_type, r.id)):
            video = catalog.videos.get(row.video_id) or by_uri.get(storage.absolute(row.video))
            if video is None:
                continue
            if sum(q["question_type"] == row.question_type for q in video.questions) < QUESTIONS_PER_TYPE:
                video.questions.append(_question(row))
        return catalog

    def listing(self) -> list[dict]:
        return [v.summary() for v in self.videos.values()]

    def get(self, video_id: str) -> DemoVideo | None:
        return self.videos.get(video_id)

    def video_uri(self, video: DemoVideo) -> str:
        """The video file of an entry (reads the scene's ``scene.json`` once)."""
        if video.uri is None:
            video.uri = read_scene(video.scene_dir).video_uri(video.scene_dir)
        return video.uri

    def layout(self, video: DemoVideo) -> dict | None:
        """The annotated 3D layout of a scene in the viewer's JSON form; None for a plain video."""
        if video.scene_dir is None:
            return None
        return scene_point_cloud(read_scene(video.scene_dir)).to_json()


def sampled_frames(
    video: bytes, num_frames: int, max_frames: int | None, name: str, max_pixels: int | None = None
) -> dict:
    """The frames the model sees (the one sampler, ``num_frames`` of them) as JPEG ``data:`` URLs.

    Raises:
        VideoDecodeError: the bytes are not a decodable video; ``VideoTooLongError`` past
            ``max_frames``, ``VideoTooLargeError`` past ``max_pixels`` per frame.
    """
    decoded = read_video(video, num_frames, max_frames, name, max_pixels=max_pixels)
    return {
        "num_frames": decoded.num_frames,
        "fps": decoded.fps,
        "duration_s": decoded.duration_s,
        "frame_indices": decoded.frame_indices.tolist(),
        "timestamps": [round(t, 3) for t in decoded.timestamps.tolist()],
        "images": [
            "data:image/jpeg;base64," + base64.b64encode(jpeg_thumbnail(f, FRAME_THUMBNAIL_SIDE)).decode()
            for f in decoded.frames
        ],
    }


def model_num_frames(model: str) -> int:
    """Frames per video of the served model (a preset name or a ``save_pretrained`` folder/URI)."""
    from vlm3r_core.presets import PRESETS, get_preset
    from vlm3r_core.vlm.checkpoint import read_saved_config

    return get_preset(model).num_frames if model in PRESETS else read_saved_config(model).num_frames


class DemoSite:
    """What the demo routes answer, for one ingress replica. Blocking (storage, decoding): the
    ingress calls it in a thread. The catalogue and the model's frame count are read once, at the
    first request that needs them. Errors are :class:`ApiError`s, except decoding errors
    (``VideoDecodeError``), which the ingress maps like the encoder's."""

    def __init__(self, args: Vlm3rArgs):
        self.args = args
        self._lock = threading.Lock()
        self._catalog: DemoCatalog | None = None
        self._num_frames: int | None = None

    def catalog(self) -> DemoCatalog:
        with self._lock:
            if self._catalog is None:
                try:
                    self._catalog = DemoCatalog.load(self.args.demo_videos, self.args.demo_questions)
                except (OSError, ValueError) as e:
                    raise ApiError(
                        500, f"cannot read the demo videos at {self.args.demo_videos!r} ({e})", "demo_unavailable"
                    ) from None
            return self._catalog

    def num_frames(self) -> int:
        if self._num_frames is None:
            self._num_frames = model_num_frames(self.args.model)
        return self._num_frames

    def listing(self) -> dict:
        """``GET /demo/videos``: the served model's name and frame count, and the videos."""
        return {"model": self.args.served_model_name, "num_frames": self.num_frames(), "videos": self.catalog().listing()}

    def _video(self, video_id: str) -> DemoVideo:
        video = self.catalog().get(video_id)
        if video is None:
            raise ApiError(404, f"video: no demo video {video_id!r}", "not_found", param="video")
        return video

    def video_file(self, video_id: str) -> tuple[bytes, str]:
        """``GET /demo/videos/file``: the video's bytes and media type."""
        uri = self.catalog().video_uri(self._video(video_id))
        return fetch_video(uri, self.args.max_video_bytes, "video"), mimetypes.guess_type(uri)[0] or "video/mp4"

    def layout(self, video_id: str) -> dict:
        """``GET /demo/videos/layout``: a scene's annotated layout in the viewer's JSON form."""
        layout = self.catalog().layout(self._video(video_id))
        if layout is None:
            raise ApiError(404, f"video: {video_id!r} has no scene.json, so no 3D layout", "no_layout", param="video")
        return layout

    def frames(self, video: bytes) -> dict:
        """``POST /demo/frames``: the frames the served model samples from a video."""
        if not video:
            raise ApiError(400, "the request body must be a video", "missing_video")
        return sampled_frames(
            video, self.num_frames(), self.args.max_video_frames, "the video", self.args.max_video_pixels
        )
