"""ARKitScenes reader on a tiny 3DOD video folder in its own layout (see source_fixtures.py)."""

from __future__ import annotations

import numpy as np
import pytest
import source_fixtures as sf

from datagen.readers import list_source_scenes, official_splits, read_source_scene
from datagen.readers.arkitscenes import read_trajectory
from datagen.readers.common import SourceFormatError

VIDEO = "41069025"


@pytest.fixture
def folder(tmp_path):
    return sf.write_arkit_scene(tmp_path / "3dod" / "Validation", VIDEO)


def test_trajectory_is_world_to_camera_and_inverted_to_camera_centres(folder):
    times, cam_to_world = read_trajectory(str(folder / f"{VIDEO}_frames" / "lowres_wide.traj"))
    assert times.tolist() == pytest.approx([100.0, 100.102, 100.2])
    for pose, eye in zip(cam_to_world, sf.EYES[:3], strict=True):
        np.testing.assert_allclose(pose[:3, 3], eye, atol=1e-6)  # camera centre, not the raw translation
        np.testing.assert_allclose(pose, sf.look_at(eye), atol=1e-6)

    scene = read_source_scene("arkitscenes", str(folder), VIDEO, "val").scene
    np.testing.assert_allclose([f.camera_center for f in scene.frames], sf.EYES[:3], atol=1e-6)


def test_frames_are_matched_by_timestamp_and_unmatched_ones_dropped(folder):
    result = read_source_scene("arkitscenes", str(folder), VIDEO, "val")
    # frame 1's pose is 2 ms away (matched); frame 3 has no pose at all (dropped and counted)
    assert (result.frames_dropped, result.drop_reasons) == (1, {"no pose within 5 ms": 1})
    scene = result.scene
    assert scene.extra["source"]["frames"] == ["100.000", "100.100", "100.200"]
    assert (scene.video.num_frames, scene.video.fps, scene.video.width, scene.video.height) == (
        3,
        10.0,
        32,
        24,
    )
    assert scene.frames[0].intrinsics.fx == sf.FX


def test_rotated_box_keeps_its_rotation_and_visibility_contains_its_centre(folder):
    scene = read_source_scene("arkitscenes", str(folder), VIDEO, "val").scene
    (table,) = scene.objects
    assert (table.instance_id, table.category) == (0, "table")
    assert scene.extra["source"]["instance_uids"] == {"0": "a1b2"}
    np.testing.assert_allclose(table.rotation, sf.yaw_matrix(sf.ARKIT_TABLE_YAW), atol=1e-9)
    np.testing.assert_allclose(table.extent, sf.TABLE_EXTENT, atol=1e-9)
    for frame in scene.frames:
        (vis,) = frame.visible
        u, v = sf.project(sf.TABLE_CENTER, frame.cam_to_world)
        x0, y0, x1, y1 = vis.bbox_2d
        assert vis.instance_id == 0 and x0 <= u <= x1 and y0 <= v <= y1 and vis.pixels > 0
    assert scene.room.area_m2 == pytest.approx(sf.ROOM_X * sf.ROOM_Y, abs=0.3)  # ascii PLY mesh


def test_malformed_trajectory_pincam_and_mesh_raise_clear_errors(folder):
    traj = folder / f"{VIDEO}_frames" / "lowres_wide.traj"
    good = traj.read_text()
    traj.write_text(good + "100.4 0.1 0.2\n")
    with pytest.raises(SourceFormatError, match=r"lowres_wide\.traj: line 4: expected 7 numbers"):
        read_source_scene("arkitscenes", str(folder), VIDEO, "val")
    traj.write_text(good)

    pincam = folder / f"{VIDEO}_frames" / "lowres_wide_intrinsics" / f"{VIDEO}_100.100.pincam"
    pincam.write_text("256 192 211.9\n")
    with pytest.raises(SourceFormatError, match=rf"{VIDEO}_100\.100\.pincam: expected 6 numbers"):
        read_source_scene("arkitscenes", str(folder), VIDEO, "val")

    mesh = folder / f"{VIDEO}_3dod_mesh.ply"
    mesh.write_text(mesh.read_text()[:-200])
    with pytest.raises(SourceFormatError, match=r"3dod_mesh\.ply: truncated: element 'face' ends at row"):
        read_source_scene("arkitscenes", str(folder), VIDEO, "val")


def test_folds_and_official_split_csv(folder, tmp_path):
    (found,) = list_source_scenes("arkitscenes", str(tmp_path / "3dod"))
    assert (found.scene_id, found.fold_split) == (VIDEO, "val")
    csv = tmp_path / "3dod_train_val_splits.csv"
    csv.write_text("video_id,visit_id,fold\n40753679,NA,Training\n41069025,381619,Validation\n")
    assert official_splits("arkitscenes", str(tmp_path)) == {"40753679": "train", "41069025": "val"}
    csv.write_text("video_id,visit_id,fold\n40753679,NA,Testing\n")
    with pytest.raises(SourceFormatError, match="line 2: fold must be one of"):
        official_splits("arkitscenes", str(tmp_path))
