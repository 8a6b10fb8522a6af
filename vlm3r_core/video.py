"""Video decoding and the one frame-sampling rule of the system.

Frame sampling for a video of N decoded frames is ``numpy.linspace(0, N - 1, K, dtype=int)`` with
K = 32 by default (the rule of the official VSI-Bench evaluation and of VLM-3R training). Questions
that say "frame k of 32" refer to the k-th sampled frame (1-based). Training, evaluation, serving
and token precompute all call :func:`sample_frame_indices`; nothing else samples frames.

Decoding uses PyAV. Shapes: ``T`` sampled frames, ``H`` x ``W`` pixels, RGB uint8.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import av
import numpy as np

from vlm3r_core import storage

DEFAULT_NUM_FRAMES = 32


class VideoDecodeError(ValueError):
    """A video that cannot be opened or decoded; the message names the video and the reason."""


class VideoTooLongError(VideoDecodeError):
    """A video with more frames than the ``max_frames`` limit of :func:`read_video`."""


class VideoTooLargeError(VideoDecodeError):
    """A video with a frame of more pixels than the ``max_pixels`` limit of :func:`read_video`."""


@dataclass(frozen=True)
class DecodedVideo:
    """Sampled frames of one video.

    Attributes:
        frames: (T, H, W, 3) uint8 RGB.
        frame_indices: (T,) indices of the sampled frames in the decoded stream.
        timestamps: (T,) seconds of each sampled frame (index / fps).
        num_frames: N, frames decoded from the whole video.
        fps: average frame rate of the stream.
    """

    frames: np.ndarray
    frame_indices: np.ndarray
    timestamps: np.ndarray
    num_frames: int
    fps: float

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def sample_frame_indices(num_frames: int, num_samples: int = DEFAULT_NUM_FRAMES) -> np.ndarray:
    """Indices of the uniformly sampled frames: ``linspace(0, N - 1, K, dtype=int)``.

    Args:
        num_frames: N, number of frames in the video (>= 1).
        num_samples: K, number of frames to sample (>= 1). When K > N indices repeat, as in the
            official evaluation.

    Returns:
        (K,) int64 array of frame indices, non-decreasing, first 0 and last N - 1.
    """
    if num_frames < 1:
        raise ValueError(f"cannot sample frames from a video with {num_frames} frames")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    return np.linspace(0, num_frames - 1, num_samples, dtype=int).astype(np.int64)


def _open(source: str | bytes, name: str) -> av.container.InputContainer:
    try:
        if isinstance(source, bytes):
            return av.open(io.BytesIO(source), mode="r")
        if storage.is_remote(source):
            return av.open(io.BytesIO(storage.read_bytes(source)), mode="r")
        _, path = storage.filesystem(source)
        return av.open(path, mode="r")
    except FileNotFoundError as e:
        raise VideoDecodeError(f"{name}: no such video file") from e
    except (av.error.FFmpegError, OSError) as e:
        raise VideoDecodeError(f"{name}: cannot open video ({e})") from e


# Leading bytes of the video containers :func:`sniff_container` recognises -> PyAV demuxer name.
_MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip")  # ISO BMFF / QuickTime first box


def sniff_container(data: bytes) -> str | None:
    """The container of encoded video bytes from their first bytes, or None for anything else.

    Returns ``"mp4"`` (ISO BMFF: mp4, mov, m4v), ``"matroska"`` (mkv, webm) or ``"avi"``. Other
    data (images, text, playlists, unknown containers) gives None: a server that sniffs before
    calling FFmpeg never lets FFmpeg guess a demuxer (image2, concat or HLS) for untrusted bytes.
    """
    if len(data) >= 8 and data[4:8] in _MP4_BOXES:
        return "mp4"
    if data[:4] == b"\x1a\x45\xdf\xa3":
        return "matroska"
    if data[:4] == b"RIFF" and data[8:12] == b"AVI ":
        return "avi"
    return None


@dataclass(frozen=True)
class VideoProbe:
    """What a video's container says about it, read without decoding a frame.

    Attributes:
        width, height: frame size in pixels.
        num_frames: N, frames of the first video stream (the container's count; packets counted
            when the container has none).
        fps: average frame rate (0 when unknown).
        codec: the stream's codec name (``"h264"``).
        container: the demuxer PyAV chose (``"mov,mp4,m4a,3gp,3g2,mj2"``, ``"matroska,webm"``).
    """

    width: int
    height: int
    num_frames: int
    fps: float
    codec: str
    container: str = ""

    @property
    def pixels(self) -> int:
        return self.width * self.height

    def sampled_timestamps(self, num_samples: int = DEFAULT_NUM_FRAMES) -> np.ndarray:
        """(K,) seconds of the frames :func:`read_video` samples, as it computes them (index / fps),
        when the decoder yields the container's frame count."""
        fps = self.fps if self.fps > 0 else 1.0
        return sample_frame_indices(max(self.num_frames, 1), num_samples) / fps

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


def probe_video(source: str | bytes, name: str | None = None) -> VideoProbe:
    """Reads a video's size, frame count, rate and codec from its container, decoding nothing.

    A remote URI is read through a file object, so only the parts of the file the demuxer asks
    for are fetched (the header; all packets only when the header holds no frame count).

    Raises:
        VideoDecodeError: no such file, not a video container, or no video stream.
    """
    name = name or (source if isinstance(source, str) else "<video bytes>")
    try:
        if isinstance(source, str) and storage.is_remote(source):
            fs, path = storage.filesystem(source)
            with storage.translate_errors(source), fs.open(path, "rb") as f, av.open(f, mode="r") as container:
                return _probe(container, name)
        with _open(source, name) as container:
            return _probe(container, name)
    except FileNotFoundError as e:
        raise VideoDecodeError(f"{name}: no such video file") from e
    except (av.error.FFmpegError, OSError) as e:
        raise VideoDecodeError(f"{name}: cannot open video ({e})") from e


def _probe(container: av.container.InputContainer, name: str) -> VideoProbe:
    if not container.streams.video:
        raise VideoDecodeError(f"{name}: no video stream")
    stream = container.streams.video[0]
    n = int(stream.frames or 0)
    if n <= 0:
        n = sum(1 for p in container.demux(stream) if p.size > 0)
    return VideoProbe(
        width=int(stream.codec_context.width),
        height=int(stream.codec_context.height),
        num_frames=n,
        fps=float(stream.average_rate) if stream.average_rate else 0.0,
        codec=str(stream.codec_context.name),
        container=str(container.format.name),
    )


def _count_frames(source: str | bytes, name: str) -> int:
    """Counts the video packets of the first stream without decoding them."""
    with _open(source, name) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{name}: no video stream")
        stream = container.streams.video[0]
        try:
            return sum(1 for p in container.demux(stream) if p.size > 0)
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"{name}: cannot read packets ({e})") from e


def _rgb(frame: av.VideoFrame, resize_to: int | None) -> np.ndarray:
    """One decoded frame as (H, W, 3) uint8 RGB; with more pixels than ``resize_to`` squared it is
    squashed to ``resize_to`` x ``resize_to`` in the same swscale pass (area filter), so the
    full-size RGB frame is never allocated."""
    if resize_to is not None and frame.width * frame.height > resize_to * resize_to:
        frame = frame.reformat(width=resize_to, height=resize_to, format="rgb24", interpolation="AREA")
        return frame.to_ndarray()
    return frame.to_ndarray(format="rgb24")


def _decode_selected(
    source: str | bytes,
    name: str,
    wanted: set[int],
    max_frames: int | None,
    resize_to: int | None = None,
    max_pixels: int | None = None,
):
    """Decodes the whole stream once; returns ({index: (H, W, 3) uint8}, decoded count, fps)."""
    kept: dict[int, np.ndarray] = {}
    count = 0
    with _open(source, name) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{name}: no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else 0.0
        try:
            for frame in container.decode(stream):
                if max_pixels is not None and frame.width * frame.height > max_pixels:
                    raise VideoTooLargeError(
                        f"{name}: frame {count} is {frame.width}x{frame.height}, more than the limit of {max_pixels} pixels"
                    )
                if count in wanted:
                    kept[count] = _rgb(frame, resize_to)
                count += 1
                if max_frames is not None and count > max_frames:
                    raise VideoTooLongError(f"{name}: more than {max_frames} frames")
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"{name}: decoding failed after {count} frames ({e})") from e
    return kept, count, fps


def iter_frames(source: str | bytes, indices: Iterable[int], name: str | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decodes a video once and yields ``(index, frame)`` for the wanted frame numbers (decode
    order, 0-based), in increasing order; frames are (H, W, 3) uint8 RGB, one in memory at a time.

    Raises:
        VideoDecodeError: unreadable video, or it ends before the last wanted frame.
    """
    name = name or (source if isinstance(source, str) else "<video bytes>")
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        return
    if isinstance(source, str) and storage.is_remote(source):
        source = storage.read_bytes(source)
    position = 0
    with _open(source, name) as container:
        if not container.streams.video:
            raise VideoDecodeError(f"{name}: no video stream")
        try:
            for number, frame in enumerate(container.decode(container.streams.video[0])):
                if number == wanted[position]:
                    yield number, frame.to_ndarray(format="rgb24")
                    position += 1
                    if position == len(wanted):
                        return
        except av.error.FFmpegError as e:
            raise VideoDecodeError(f"{name}: cannot decode video ({e})") from e
    raise VideoDecodeError(f"{name}: video ended before frame {wanted[-1]} ({len(wanted) - position} wanted frames missing)")


def _decoded(kept: dict[int, np.ndarray], indices: np.ndarray, count: int, fps: float, name: str) -> DecodedVideo:
    """The frames at ``indices`` of decoded ``kept`` frames (a stream without a rate counts 1 fps).

    Raises:
        VideoDecodeError: the frames differ in size (a stream whose resolution changes).
    """
    fps = fps if fps > 0 else 1.0
    sizes = {kept[i].shape for i in indices.tolist()}
    if len(sizes) > 1:
        raise VideoDecodeError(f"{name}: the frame size changes within the video ({sorted(sizes)[:2]})")
    return DecodedVideo(
        frames=np.stack([kept[i] for i in indices.tolist()]),  # (T, H, W, 3)
        frame_indices=indices,
        timestamps=indices / fps,
        num_frames=count,
        fps=fps,
    )


def read_video(
    source: str | bytes,
    num_samples: int = DEFAULT_NUM_FRAMES,
    max_frames: int | None = None,
    name: str | None = None,
    resize_to: int | None = None,
    max_pixels: int | None = None,
) -> DecodedVideo:
    """Decodes a video and returns its uniformly sampled frames.

    Packets are counted first (cheap), then the stream is decoded once keeping only the sampled
    frames in memory. If the decoder yields a different number of frames than there were packets,
    the sampling is redone on the decoded count (a second decode).

    Args:
        source: a URI (local path, ``file://``, ``s3://``) or the encoded bytes.
        num_samples: K frames to sample.
        max_frames: refuse videos with more frames than this (serving limits).
        name: how errors name the video (defaults to the URI).
        resize_to: frames with more pixels than ``resize_to`` squared are squash-resized to
            ``resize_to`` x ``resize_to`` while decoding (the encoders squash frames to squares
            anyway), so memory after decoding does not grow with the video's resolution; smaller
            frames are kept as decoded. None keeps every frame at its size.
        max_pixels: refuse a video as soon as a decoded frame has more pixels than this (the
            container's header may announce a smaller size than the stream holds).

    Raises:
        VideoDecodeError: unreadable or empty video.
        VideoTooLongError: more than ``max_frames`` frames (a ``VideoDecodeError``).
        VideoTooLargeError: a frame of more than ``max_pixels`` pixels (a ``VideoDecodeError``).
    """
    name = name or (source if isinstance(source, str) else "<video bytes>")
    if isinstance(source, str) and storage.is_remote(source):
        source = storage.read_bytes(source)  # fetch once, decode twice
    packets = _count_frames(source, name)
    if max_frames is not None and packets > max_frames:
        raise VideoTooLongError(f"{name}: {packets} frames, more than the limit of {max_frames}")
    if packets == 0:
        raise VideoDecodeError(f"{name}: no decodable frames")
    indices = sample_frame_indices(packets, num_samples)
    kept, count, fps = _decode_selected(source, name, set(indices.tolist()), max_frames, resize_to, max_pixels)
    if count == 0:
        raise VideoDecodeError(f"{name}: no decodable frames")
    if count != packets:
        indices = sample_frame_indices(count, num_samples)
        kept, count, fps = _decode_selected(source, name, set(indices.tolist()), max_frames, resize_to, max_pixels)
    return _decoded(kept, indices, count, fps, name)


def count_frames(source: str | bytes, name: str | None = None) -> int:
    """Frames in a video, counted from its packets without decoding them (as :func:`read_video` does).

    Raises:
        VideoDecodeError: unreadable video, or one without a video stream.
    """
    return _count_frames(source, name or (source if isinstance(source, str) else "<video bytes>"))


def read_frames(source: str | bytes, frame_indices: Sequence[int], name: str | None = None) -> DecodedVideo:
    """Decodes the frames at the given video frame numbers (e.g. the frames a question names).

    Args:
        source: a URI (local path, ``file://``, ``s3://``) or the encoded bytes.
        frame_indices: frame numbers in the decoded stream, in any order (repeats allowed).
        name: how errors name the video (defaults to the URI).

    Returns:
        The frames in the order of ``frame_indices``; ``num_frames`` is the whole video's count.

    Raises:
        VideoDecodeError: unreadable video, or an index outside the video.
    """
    name = name or (source if isinstance(source, str) else "<video bytes>")
    indices = np.asarray(frame_indices, dtype=np.int64)
    if indices.size == 0:
        raise ValueError(f"{name}: no frame indices to read")
    kept, count, fps = _decode_selected(source, name, set(indices.tolist()), None)
    outside = sorted(set(indices.tolist()) - set(kept))
    if outside:
        raise VideoDecodeError(f"{name}: frames {outside} are outside the video ({count} frames)")
    return _decoded(kept, indices, count, fps, name)


def jpeg_thumbnail(frame: np.ndarray, max_side: int = 160, quality: int = 80) -> bytes:
    """A small JPEG of one (H, W, 3) uint8 RGB frame, its longer side at most ``max_side`` pixels."""
    from PIL import Image

    image = Image.fromarray(frame)
    image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_video(uri: str, frames: np.ndarray, fps: float, crf: int = 23, deterministic: bool = False) -> None:
    """Encodes (N, H, W, 3) uint8 RGB frames as an H.264 mp4 at ``uri`` (atomic write).

    H and W must be even (yuv420p). ``deterministic``: the same frames give the same bytes, by
    encoding on one thread without macroblock-tree rate control (measured: with either, libx264's
    output varies from run to run, at small sizes even on one thread).
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{uri}: frames must be (N, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    write_video_stream(uri, iter(frames), fps, crf, deterministic)


def write_video_stream(uri: str, frames: Iterable[np.ndarray], fps: float, crf: int = 23, deterministic: bool = False) -> int:
    """Encodes (H, W, 3) uint8 RGB frames one at a time as an H.264 mp4 at ``uri`` (atomic write).

    Only the encoded bytes are held in memory, so long videos need not fit in RAM as raw frames.
    Every frame must have the same even H and W (yuv420p). Returns the number of frames written.
    ``deterministic`` as in :func:`write_video`.
    """
    buf = io.BytesIO()
    n, stream = 0, None
    with av.open(buf, mode="w", format="mp4") as container:
        for frame in frames:
            if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
                raise ValueError(f"{uri}: frame {n} must be (H, W, 3) uint8, got {frame.shape} {frame.dtype}")
            h, w = frame.shape[:2]
            if stream is None:
                if h % 2 or w % 2:
                    raise ValueError(f"{uri}: H.264 needs even width and height, got {w}x{h}")
                stream = container.add_stream("libx264", rate=int(round(fps)))
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
                options = {"crf": str(crf), "preset": "veryfast"}
                if deterministic:
                    options["x264-params"] = "threads=1:lookahead-threads=1:mbtree=0"
                stream.options = options
            elif (w, h) != (stream.width, stream.height):
                raise ValueError(f"{uri}: frame {n} is {w}x{h}, the video is {stream.width}x{stream.height}")
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
            n += 1
        if stream is None:
            raise ValueError(f"{uri}: no frames to encode")
        for packet in stream.encode():
            container.mux(packet)
    storage.write_bytes(uri, buf.getvalue())
    return n
