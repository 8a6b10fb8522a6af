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


def test_sniffing_knows_video_containers_and_nothing_else(tmp_path):
    from vlm3r_core.video import sniff_container

    write_video(str(tmp_path / "v.mp4"), np.zeros((4, 16, 16, 3), np.uint8), fps=4)
    assert sniff_container((tmp_path / "v.mp4").read_bytes()) == "mp4"
    assert sniff_container(b"\x1a\x45\xdf\xa3" + b"\0" * 20) == "matroska"
    assert sniff_container(b"RIFF\0\0\0\0AVI LIST") == "avi"
    for data in (b"\x89PNG\r\n\x1a\n" + b"\0" * 16, b"\xff\xd8\xff\xe0", b"#EXTM3U\n", b"RIFF\0\0\0\0WAVE", b"", b"ftyp"):
        assert sniff_container(data) is None, data


def test_large_frames_are_downsized_while_decoding_and_the_probe_predicts_the_sampling(tmp_path):
    from vlm3r_core.video import VideoTooLargeError, probe_video

    frames = np.stack([np.full((96, 128, 3), 10 * i, np.uint8) for i in range(9)])
    uri = str(tmp_path / "big.mp4")
    write_video(uri, frames, fps=3)
    full = read_video(uri, num_samples=4)
    small = read_video(uri, num_samples=4, resize_to=32)  # 128 x 96 > 32 x 32: squashed while decoding
    assert full.frames.shape == (4, 96, 128, 3) and small.frames.shape == (4, 32, 32, 3)
    np.testing.assert_allclose(small.frames.reshape(4, -1).mean(1), full.frames.reshape(4, -1).mean(1), atol=2)
    assert read_video(uri, num_samples=4, resize_to=128).frames.shape == (4, 96, 128, 3)  # smaller: as decoded
    probe = probe_video(uri)
    assert (probe.width, probe.height, probe.pixels, probe.codec) == (128, 96, 128 * 96, "h264")
    assert probe.container.startswith("mov,mp4")
    np.testing.assert_allclose(probe.sampled_timestamps(4), full.timestamps)
    with pytest.raises(VideoTooLargeError, match="128x96, more than the limit of 12287 pixels"):
        read_video(uri, num_samples=4, max_pixels=128 * 96 - 1)
