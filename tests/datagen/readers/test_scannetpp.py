"""ScanNet++ (iPhone) reader on a tiny scene written in ScanNet++'s own layout (see source_fixtures.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import source_fixtures as sf

from datagen.readers import convert_scene, list_source_scenes, official_splits, read_source_scene
from datagen.readers.common import SourceFormatError
from vlm3r_core.scene import read_scene
from vlm3r_core.video import read_video

SCENE = "7b6477cb95"
KEPT = [0, 1, 3]  # frame_000002 has a NaN aligned_pose


def test_rotated_obb_keeps_its_rotation_and_structure_is_not_an_object(tmp_path):
    scene = read_source_scene("scannetpp", str(sf.write_scannetpp_scene(tmp_path, SCENE)), SCENE, "val").scene
    (table,) = scene.objects  # the floor group is room structure
    assert (table.instance_id, table.category) == (2, "table")
    np.testing.assert_allclose(table.center, sf.TABLE_CENTER, atol=1e-9)
    np.testing.assert_allclose(table.extent, sf.TABLE_EXTENT, atol=1e-9)
    np.testing.assert_allclose(table.rotation, sf.yaw_matrix(sf.SCANNETPP_TABLE_YAW), atol=1e-9)
    np.testing.assert_allclose(table.corners().min(0)[2], 0.0, atol=1e-9)  # sits on the floor
    assert scene.room.area_m2 == pytest.approx(sf.ROOM_X * sf.ROOM_Y, abs=0.3)


def test_nan_pose_is_dropped_and_video_frames_come_from_rgb_mp4(tmp_path):
    d = sf.write_scannetpp_scene(tmp_path, SCENE)
    result = read_source_scene("scannetpp", str(d), SCENE, "val")
    assert (result.frames_dropped, result.drop_reasons) == (1, {"non-finite pose": 1})
    assert result.source_video == str(d / "iphone" / "rgb.mp4")
    assert result.source_video_frames == tuple(KEPT)
    scene = result.scene
    assert scene.extra["source"]["frames"] == [f"frame_{i:06d}" for i in KEPT]
    assert scene.video.fps == 60.0
    for frame, i in zip(scene.frames, KEPT, strict=True):
        np.testing.assert_allclose(frame.cam_to_world, sf.look_at(sf.EYES[i]), atol=1e-9)

    done = convert_scene("scannetpp", str(d), str(tmp_path / "out"), SCENE, "val")
    video = read_video(read_scene(done.uri).video_uri(done.uri), num_samples=3)
    assert video.num_frames == 3
    expected = np.array([sf.COLOURS[i] for i in KEPT])
    np.testing.assert_allclose(video.frames[:, 12, 16].astype(int), expected, atol=12)


def test_extracted_jpeg_frames_are_used_when_present(tmp_path):
    d = sf.write_scannetpp_scene(tmp_path, SCENE, video=False)
    result = read_source_scene("scannetpp", str(d), SCENE, "train")
    assert result.source_video is None
    assert result.frame_images == tuple(str(d / "iphone" / "rgb" / f"frame_{i:06d}.jpg") for i in KEPT)


def test_visibility_boxes_contain_the_projected_object_centre(tmp_path):
    scene = read_source_scene("scannetpp", str(sf.write_scannetpp_scene(tmp_path, SCENE)), SCENE, "val").scene
    for frame in scene.frames:
        (vis,) = frame.visible
        u, v = sf.project(sf.TABLE_CENTER, frame.cam_to_world)
        x0, y0, x1, y1 = vis.bbox_2d
        assert vis.instance_id == 2 and x0 <= u <= x1 and y0 <= v <= y1 and vis.pixels > 0


def test_malformed_annotations_raise_or_skip_with_a_reason(tmp_path):
    d = sf.write_scannetpp_scene(tmp_path, SCENE)
    anno = d / "scans" / "segments_anno.json"
    original = json.loads(anno.read_text())
    anno.write_text(json.dumps({"sceneId": SCENE}))
    with pytest.raises(SourceFormatError, match=r"segments_anno\.json: missing key 'segGroups'"):
        read_source_scene("scannetpp", str(d), SCENE, "val")

    original["segGroups"][1]["obb"]["normalizedAxes"] = [1, 0, 0, 1, 0, 0, 0, 0, 1]  # two equal axes
    anno.write_text(json.dumps(original))
    result = read_source_scene("scannetpp", str(d), SCENE, "val")
    assert result.scene.objects == () and result.objects_skipped == 1

    poses = d / "iphone" / "pose_intrinsic_imu.json"
    entries = json.loads(poses.read_text())
    entries["frame_000001"]["intrinsic"] = [[1, 0], [0, 1]]
    poses.write_text(json.dumps(entries))
    with pytest.raises(
        SourceFormatError, match=r"pose_intrinsic_imu\.json: frame_000001\.intrinsic must have shape"
    ):
        read_source_scene("scannetpp", str(d), SCENE, "val")


def test_source_listing_and_official_splits(tmp_path):
    sf.write_scannetpp_scene(tmp_path / "data", "aaaa000001")
    sf.write_scannetpp_scene(tmp_path / "data", "bbbb000002")
    assert [s.scene_id for s in list_source_scenes("scannetpp", str(tmp_path))] == [
        "aaaa000001",
        "bbbb000002",
    ]
    splits = tmp_path / "splits"
    splits.mkdir()
    (splits / "nvs_sem_train.txt").write_text("aaaa000001\n")
    (splits / "nvs_sem_val.txt").write_text("bbbb000002\n")
    assert official_splits("scannetpp", str(splits)) == {"aaaa000001": "train", "bbbb000002": "val"}
