"""ScanNet v2 reader on a tiny scan written in ScanNet's own layout (see source_fixtures.py)."""

from __future__ import annotations

import numpy as np
import pytest
import source_fixtures as sf

from datagen.readers import convert_scene, list_source_scenes, official_splits, read_source_scene
from datagen.readers.common import SourceFormatError
from vlm3r_core.scene import read_scene
from vlm3r_core.video import read_video

SCENE = "scene0000_00"
KEPT = [0, 1, 3]  # fixture frames left after dropping the -inf pose (frame number 20)


@pytest.fixture
def scan(tmp_path):
    return sf.write_scannet_scene(tmp_path / "scans", SCENE)


def test_axis_alignment_moves_mesh_boxes_and_poses_into_the_world_frame(scan):
    scene = read_source_scene("scannet", str(scan), SCENE, "val").scene
    # The files hold the raw frame: the table centre there is inverse(A) @ world centre.
    raw_center = np.linalg.inv(sf.SCANNET_ALIGNMENT) @ np.append(sf.TABLE_CENTER, 1)
    assert np.linalg.norm(raw_center[:3] - sf.TABLE_CENTER) > 1.0
    (table,) = scene.objects
    assert (table.instance_id, table.category) == (2, "table")
    np.testing.assert_allclose(table.center, sf.TABLE_CENTER, atol=1e-5)
    np.testing.assert_allclose(table.extent, sf.TABLE_EXTENT, atol=1e-5)
    np.testing.assert_allclose(table.rotation, np.eye(3), atol=1e-5)
    for frame, i in zip(scene.frames, KEPT, strict=True):
        np.testing.assert_allclose(frame.cam_to_world, sf.look_at(sf.EYES[i]), atol=1e-6)
    room = scene.room
    assert room.floor_z == pytest.approx(0.0, abs=1e-6)
    assert room.height == pytest.approx(sf.ROOM_H, abs=0.1)
    assert room.area_m2 == pytest.approx(sf.ROOM_X * sf.ROOM_Y, abs=0.3)
    np.testing.assert_allclose(room.floor_polygon.min(0), [0, 0], atol=0.06)
    np.testing.assert_allclose(room.floor_polygon.max(0), [sf.ROOM_X, sf.ROOM_Y], atol=0.06)
    assert scene.extra["source"]["axis_aligned"] is True


def test_scan_without_axis_alignment_stays_in_its_raw_frame(tmp_path):
    scan = sf.write_scannet_scene(tmp_path / "scans", SCENE, aligned=False)
    scene = read_source_scene("scannet", str(scan), SCENE, "test").scene
    np.testing.assert_allclose(scene.objects[0].center, sf.TABLE_CENTER, atol=1e-5)
    assert scene.extra["source"]["axis_aligned"] is False


def test_inf_pose_frame_is_dropped_counted_and_video_frames_renumbered(scan):
    result = read_source_scene("scannet", str(scan), SCENE, "val")
    assert result.frames_dropped == 1
    assert result.drop_reasons == {"non-finite pose": 1}
    scene = result.scene
    assert [f.index for f in scene.frames] == [0, 1, 2]
    assert scene.extra["source"]["frames"] == ["0", "10", "30"]
    assert result.frame_images == tuple(str(scan / "color" / f"{n}.jpg") for n in (0, 10, 30))
    assert (scene.video.num_frames, scene.video.width, scene.video.height) == (3, sf.WIDTH, sf.HEIGHT)
    assert scene.video.fps == 3.0  # exported every 10th frame of a 30 Hz stream
    assert [f.timestamp for f in scene.frames] == pytest.approx([0.0, 1 / 3, 2 / 3])


def test_visibility_boxes_contain_the_projected_object_centre(scan):
    scene = read_source_scene("scannet", str(scan), SCENE, "val").scene
    for frame in scene.frames:
        (vis,) = frame.visible
        assert vis.instance_id == 2
        u, v = sf.project(sf.TABLE_CENTER, frame.cam_to_world)
        x0, y0, x1, y1 = vis.bbox_2d
        assert x0 <= u <= x1 and y0 <= v <= y1
        assert 0 < vis.pixels < sf.WIDTH * sf.HEIGHT


def test_structure_labels_and_empty_instances_are_not_objects(scan):
    result = read_source_scene("scannet", str(scan), SCENE, "val")
    assert [o.category for o in result.scene.objects] == ["table"]
    assert result.objects_skipped == 1  # the 'ghost' group has no vertices


def test_convert_writes_a_decodable_video_of_the_kept_frames(scan, tmp_path):
    done = convert_scene("scannet", str(scan), str(tmp_path / "out"), SCENE, "val")
    assert done.uri == str(tmp_path / "out" / "scenes" / "scannet" / SCENE)
    scene = read_scene(done.uri)
    video = read_video(scene.video_uri(done.uri), num_samples=3)
    assert video.num_frames == scene.video.num_frames == 3
    expected = np.array([sf.COLOURS[i] for i in KEPT])
    np.testing.assert_allclose(video.frames[:, 12, 16].astype(int), expected, atol=12)


def test_truncated_and_malformed_files_name_the_file_and_the_reason(scan):
    mesh = scan / f"{SCENE}_vh_clean_2.ply"
    mesh.write_bytes(mesh.read_bytes()[:-40])
    with pytest.raises(SourceFormatError, match=rf"{mesh.name}: truncated: element 'face'"):
        read_source_scene("scannet", str(scan), SCENE, "val")
    mesh.write_bytes(b"not a ply at all")
    with pytest.raises(SourceFormatError, match=rf"{mesh.name}: not a PLY file"):
        read_source_scene("scannet", str(scan), SCENE, "val")


def test_malformed_annotation_and_alignment_files_raise_clear_errors(tmp_path):
    scan = sf.write_scannet_scene(tmp_path / "a", SCENE)
    agg = scan / f"{SCENE}.aggregation.json"
    agg.write_text(agg.read_text()[:50])
    with pytest.raises(SourceFormatError, match=rf"{agg.name}: invalid JSON"):
        read_source_scene("scannet", str(scan), SCENE, "val")

    scan = sf.write_scannet_scene(tmp_path / "b", SCENE)
    info = scan / f"{SCENE}.txt"
    info.write_text("axisAlignment = 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0\n")
    with pytest.raises(
        SourceFormatError, match=rf"{info.name}: line 1: axisAlignment needs 16 numbers, got 15"
    ):
        read_source_scene("scannet", str(scan), SCENE, "val")

    scan = sf.write_scannet_scene(tmp_path / "c", SCENE)
    segs = scan / f"{SCENE}_vh_clean_2.0.010000.segs.json"
    segs.write_text('{"segIndices": [1, 2, 3]}')
    with pytest.raises(SourceFormatError, match=rf"{segs.name}: 3 segIndices for a mesh of 28 vertices"):
        read_source_scene("scannet", str(scan), SCENE, "val")


def test_source_listing_and_official_splits(tmp_path):
    sf.write_scannet_scene(tmp_path / "scans", "scene0000_00")
    sf.write_scannet_scene(tmp_path / "scans", "scene0011_00")
    (tmp_path / "scans" / "not_a_scene").mkdir()
    found = list_source_scenes("scannet", str(tmp_path))  # the dataset root: scans/ is found
    assert [s.scene_id for s in found] == ["scene0000_00", "scene0011_00"]
    assert found[0].uri == str(tmp_path / "scans" / "scene0000_00")

    bench = tmp_path / "Tasks" / "Benchmark"
    bench.mkdir(parents=True)
    (bench / "scannetv2_train.txt").write_text("scene0000_00\nscene0000_01\n")
    (bench / "scannetv2_val.txt").write_text("scene0011_00\n")
    assert official_splits("scannet", str(bench)) == {
        "scene0000_00": "train",
        "scene0000_01": "train",
        "scene0011_00": "val",
    }
    (bench / "scannetv2_test.txt").write_text("scene0011_00\n")
    with pytest.raises(SourceFormatError, match="scene0011_00.*both val and test"):
        official_splits("scannet", str(bench))
    with pytest.raises(FileNotFoundError, match="none of the official split files"):
        official_splits("scannet", str(tmp_path))
