"""ARKitScenes frames turned upright by ``sky_direction``: the image and its camera turn together."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import source_fixtures as sf

from datagen.readers import convert_scene, read_source_scene
from datagen.readers.arkitscenes import read_sky_directions
from datagen.readers.common import SourceFormatError
from vlm3r_core.scene import read_scene
from vlm3r_core.video import read_video

VIDEO = "41069025"
# Where the recorded dot centre (5, 3) of the 32 x 24 frame lands after the dataset's rotation
# (apple/ARKitScenes depth_upsampling/dataset.py): Left = cv2.ROTATE_90_CLOCKWISE, (u, v) -> (24 - v, u);
# Right = cv2.ROTATE_90_COUNTERCLOCKWISE, (u, v) -> (v, 32 - u); Down = cv2.ROTATE_180.
UPRIGHT_DOT = {"Up": (5.0, 3.0), "Left": (21.0, 5.0), "Down": (27.0, 21.0), "Right": (3.0, 27.0)}
UPRIGHT_SIZE = {"Up": (32, 24), "Left": (24, 32), "Down": (32, 24), "Right": (24, 32)}


def project(point: np.ndarray, cam_to_world: np.ndarray, k) -> np.ndarray:
    """(N, 2) pixels of (N, 3) world points."""
    p = (np.linalg.inv(cam_to_world) @ np.c_[point, np.ones(len(point))].T)[:3]  # (3, N) camera
    return np.stack([k.fx * p[0] / p[2] + k.cx, k.fy * p[1] / p[2] + k.cy], axis=1)


def recorded_dot_in_world(eye: np.ndarray, sky: str, depth: float = 2.0) -> np.ndarray:
    """The world point seen at the dot centre of the recorded frame, ``depth`` metres away."""
    u, v = sf.ARKIT_DOT_CENTRE
    p = np.array([(u - sf.CX) / sf.FX * depth, (v - sf.CY) / sf.FY * depth, depth, 1.0])
    return (sf.arkit_recorded_pose(eye, sky) @ p)[:3]


@pytest.mark.parametrize("sky", ["Up", "Left", "Down", "Right"])
def test_sky_direction_turns_video_pose_intrinsics_and_boxes_together(tmp_path, sky):
    folder = sf.write_arkit_scene(tmp_path / "3dod" / "Validation", VIDEO, sky)
    done = convert_scene("arkitscenes", str(folder), str(tmp_path / "out"), VIDEO, "val", sky_direction=sky)
    scene = read_scene(done.uri)
    assert (scene.video.width, scene.video.height) == UPRIGHT_SIZE[sky]
    assert (scene.extra["source"]["sky_direction"], scene.extra["source"]["pose_sky_direction"]) == (sky, sky)
    video = read_video(scene.video_uri(done.uri), num_samples=3)
    assert video.frames.shape == (3, UPRIGHT_SIZE[sky][1], UPRIGHT_SIZE[sky][0], 3)

    table = sf.box_mesh(sf.TABLE_CENTER, sf.TABLE_EXTENT, sf.yaw_matrix(sf.ARKIT_TABLE_YAW))[0]  # (8, 3)
    for frame, image, eye in zip(scene.frames, video.frames, sf.EYES[:3], strict=True):
        # the decoded frame shows the dot where the rotation moved it ...
        ys, xs = np.nonzero(image.astype(np.float64).mean(axis=-1) > 200)
        assert (xs.mean() + 0.5, ys.mean() + 0.5) == pytest.approx(UPRIGHT_DOT[sky], abs=0.25)
        # ... and the new pose + intrinsics project the world point behind it to the same pixel
        (dot,) = project(recorded_dot_in_world(eye, sky)[None], frame.cam_to_world, frame.intrinsics)
        np.testing.assert_allclose(dot, UPRIGHT_DOT[sky], atol=1e-6)
        # the frame is upright: world up is image up (the upright look-at camera)
        np.testing.assert_allclose(frame.cam_to_world, sf.look_at(eye), atol=1e-6)
        # the stored 2D box is the table's projected outline in the turned frame
        (vis,) = frame.visible
        corners = project(table, frame.cam_to_world, frame.intrinsics)
        np.testing.assert_allclose(vis.bbox_2d, [*corners.min(0), *corners.max(0)], atol=1.0)


def test_without_sky_direction_frames_stay_as_recorded_and_the_reader_says_so(tmp_path, caplog):
    sideways = sf.write_arkit_scene(tmp_path / "left" / "Validation", VIDEO, "Left")
    with caplog.at_level(logging.INFO, logger="datagen.readers"):
        result = read_source_scene("arkitscenes", str(sideways), VIDEO, "val")
    assert "frames stay as recorded (no sky_direction given; the poses put the sky Left)" in caplog.text
    scene = result.scene
    assert (result.quarter_turns, scene.video.width, scene.video.height) == (0, 32, 24)
    assert (scene.extra["source"]["sky_direction"], scene.extra["source"]["pose_sky_direction"]) == (
        None,
        "Left",
    )
    for frame, eye in zip(scene.frames, sf.EYES[:3], strict=True):
        np.testing.assert_allclose(frame.cam_to_world, sf.arkit_recorded_pose(eye, "Left"), atol=1e-6)
        assert (frame.intrinsics.cx, frame.intrinsics.cy) == (sf.CX, sf.CY)

    upright = sf.write_arkit_scene(tmp_path / "up" / "Validation", VIDEO, "Up")
    default = read_source_scene("arkitscenes", str(upright), VIDEO, "val").scene
    explicit = read_source_scene("arkitscenes", str(upright), VIDEO, "val", sky_direction="Up").scene
    assert [f.visible for f in default.frames] == [f.visible for f in explicit.frames]
    assert [f.intrinsics for f in default.frames] == [f.intrinsics for f in explicit.frames]
    for a, b in zip(default.frames, explicit.frames, strict=True):
        np.testing.assert_array_equal(a.cam_to_world, b.cam_to_world)


def test_metadata_csv_lookup_and_bad_sky_directions(tmp_path, caplog):
    metadata = tmp_path / "metadata.csv"
    metadata.write_text(
        "video_id,visit_id,fold,sky_direction,is_in_upsampling,has_laser_scanner_point_clouds\n"
        "41069025,421035,Validation,Left,True,True\n"
        "47333462,421378,Training,Up,False,False\n"
    )
    assert read_sky_directions(str(metadata)) == {"41069025": "Left", "47333462": "Up"}
    metadata.write_text("video_id,visit_id,fold\n41069025,421035,Validation\n")
    with pytest.raises(SourceFormatError, match=r"metadata\.csv: needs columns video_id and sky_direction"):
        read_sky_directions(str(metadata))

    folder = sf.write_arkit_scene(tmp_path / "3dod" / "Validation", VIDEO, "Left")
    with pytest.raises(ValueError, match=rf"scene '{VIDEO}': sky_direction must be one of .*got 'Sideways'"):
        read_source_scene("arkitscenes", str(folder), VIDEO, "val", sky_direction="Sideways")
    with pytest.raises(ValueError, match="sky_direction applies to arkitscenes only"):
        read_source_scene("scannet", str(folder), VIDEO, "val", sky_direction="Left")
    with caplog.at_level(logging.WARNING, logger="datagen.readers"):
        read_source_scene(
            "arkitscenes", str(folder), VIDEO, "val", sky_direction="Up"
        )  # a wrong metadata row
    assert "sky_direction is Up but the poses put the sky Left" in caplog.text
