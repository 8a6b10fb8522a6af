"""Frame sampling rule and PyAV decoding."""

import io

import numpy as np
import pytest
from PIL import Image

from vlm3r_core.video import (
    VideoDecodeError,
    count_frames,
    jpeg_thumbnail,
    read_frames,
    read_video,
    sample_frame_indices,
    write_video,
)


def test_sampling_is_the_official_linspace_rule():
    np.testing.assert_array_equal(sample_frame_indices(100, 32), np.linspace(0, 99, 32, dtype=int))
    assert sample_frame_indices(1, 4).tolist() == [0, 0, 0, 0]
    assert sample_frame_indices(10, 3).tolist() == [0, 4, 9]
    with pytest.raises(ValueError):
        sample_frame_indices(0)


def test_decodes_the_sampled_frames_of_a_written_video(tmp_path):
    # Each frame is a flat grey level equal to 8 * its index, so decoded frames identify themselves.
    frames = np.stack([np.full((32, 48, 3), 8 * i, np.uint8) for i in range(25)])
    uri = str(tmp_path / "v.mp4")
    write_video(uri, frames, fps=5)
    video = read_video(uri, num_samples=6)
    assert video.num_frames == 25 and video.fps == 5
    assert video.frames.shape == (6, 32, 48, 3)
    assert video.frame_indices.tolist() == [0, 4, 9, 14, 19, 24]
    np.testing.assert_allclose(video.timestamps, video.frame_indices / 5)
    levels = video.frames.reshape(6, -1).mean(axis=1)
    np.testing.assert_allclose(levels, 8 * video.frame_indices, atol=3)
    assert video.duration_s == 5.0


def test_bad_videos_give_clear_errors(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video")
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        read_video(str(bad))
    with pytest.raises(VideoDecodeError, match="no such video"):
        read_video(str(tmp_path / "missing.mp4"))
    frames = np.zeros((12, 16, 16, 3), np.uint8)
    write_video(str(tmp_path / "long.mp4"), frames, fps=4)
    with pytest.raises(VideoDecodeError, match="limit of 5"):
        read_video(str(tmp_path / "long.mp4"), max_frames=5)
    with pytest.raises(ValueError, match="even"):
        write_video(str(tmp_path / "odd.mp4"), np.zeros((2, 15, 16, 3), np.uint8), fps=4)


def test_reads_the_frames_a_question_names(tmp_path):
    frames = np.stack([np.full((32, 48, 3), 8 * i, np.uint8) for i in range(25)])
    uri = str(tmp_path / "v.mp4")
    write_video(uri, frames, fps=5)
    assert count_frames(uri) == 25
    video = read_frames(uri, [20, 3, 3])
    assert video.frame_indices.tolist() == [20, 3, 3] and video.num_frames == 25
    np.testing.assert_allclose(video.frames.reshape(3, -1).mean(axis=1), [160, 24, 24], atol=3)
    np.testing.assert_allclose(video.timestamps, [4.0, 0.6, 0.6])
    with pytest.raises(VideoDecodeError, match=r"frames \[25\] are outside the video \(25 frames\)"):
        read_frames(uri, [0, 25])
    thumbnail = jpeg_thumbnail(video.frames[0], max_side=24)
    assert thumbnail[:2] == b"\xff\xd8"  # a JPEG
    assert Image.open(io.BytesIO(thumbnail)).size == (24, 16)
