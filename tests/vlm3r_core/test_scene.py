"""The scene contract: round trip and validation errors that name scene, field and reason."""

import copy
import math

import numpy as np
import pytest

from vlm3r_core.scene import Scene, SceneValidationError, list_scenes, read_scene, write_scene


def scene_dict():
    yaw = math.radians(30)
    rot = [[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0], [0, 0, 1]]
    pose = np.eye(4)
    pose[:3, :3] = [[1, 0, 0], [0, 0, 1], [0, -1, 0]]  # camera looking along +y, level
    pose[:3, 3] = [1.0, 0.5, 1.5]
    return {
        "scene_id": "toy-0",
        "dataset": "synthetic",
        "split": "train",
        "room": {"floor_polygon": [[0, 0], [4, 0], [4, 3], [0, 3]], "floor_z": 0.0, "height": 2.6, "area_m2": 12.0},
        "objects": [
            {"instance_id": 1, "category": "table", "center": [2, 2, 0.4], "extent": [1.2, 0.8, 0.8], "rotation": rot},
            {"instance_id": 2, "category": "chair", "center": [3, 1, 0.45], "extent": [0.5, 0.5, 0.9], "rotation": np.eye(3).tolist()},
        ],
        "video": {"uri": "video.mp4", "fps": 10.0, "num_frames": 3, "width": 64, "height": 48},
        "frames": [
            {
                "index": i,
                "timestamp": i / 10,
                "cam_to_world": pose.tolist(),
                "intrinsics": {"fx": 50.0, "fy": 50.0, "cx": 32.0, "cy": 24.0},
                "visible": [{"instance_id": 1, "bbox_2d": [10, 5, 30, 20], "pixels": 200}],
            }
            for i in range(3)
        ],
        "source_note": "extra fields survive",
    }


def test_round_trip_keeps_every_field(tmp_path):
    scene = Scene.from_dict(scene_dict())
    folder = write_scene(scene, str(tmp_path))
    assert folder.endswith("scenes/synthetic/toy-0")
    again = read_scene(folder)
    assert again.to_dict() == scene.to_dict()
    assert again.extra == {"source_note": "extra fields survive"}
    assert again.video_uri(folder) == folder + "/video.mp4"
    np.testing.assert_allclose(again.frames[0].camera_center, [1.0, 0.5, 1.5])
    assert [r.dir for r in list_scenes(str(tmp_path))] == [folder]


def test_box_corners_follow_the_rotation():
    obj = Scene.from_dict(scene_dict()).object(1)
    corners = obj.corners()
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners.mean(axis=0), obj.center)
    # every corner is at half-extent along each box axis
    local = (corners - obj.center) @ obj.rotation
    np.testing.assert_allclose(np.abs(local), np.tile(obj.extent / 2, (8, 1)))


@pytest.mark.parametrize(
    "mutate, field, reason",
    [
        (lambda d: d["objects"][0].update(extent=[1, -1, 1]), "objects[0] (instance 1).extent", "positive"),
        (lambda d: d["objects"][0].update(rotation=[[1, 0, 0], [0, 2, 0], [0, 0, 1]]), "rotation", "orthonormal"),
        (lambda d: d["objects"][0].update(center=[0, float("nan"), 0]), "center", "non-finite"),
        (lambda d: d["frames"][1].update(index=0), "frames[1] (index 0).index", "must increase"),
        (lambda d: d["frames"][0]["cam_to_world"][0].__setitem__(3, float("inf")), "cam_to_world", "finite"),
        (lambda d: d.update(dataset="mystery"), "dataset", "must be one of"),
        (lambda d: d["room"].pop("height"), "room.height", "missing"),
        (lambda d: d["frames"][0]["visible"][0].update(instance_id=99), "visible", "unknown instance_id 99"),
        (lambda d: d["objects"].append(dict(d["objects"][0])), "instance_id", "duplicate"),
        (lambda d: d["video"].update(num_frames="three"), "video.num_frames", "expected int"),
    ],
)
def test_invalid_scenes_name_scene_field_and_reason(mutate, field, reason):
    d = copy.deepcopy(scene_dict())
    mutate(d)
    with pytest.raises(SceneValidationError) as err:
        Scene.from_dict(d)
    message = str(err.value)
    assert message.startswith("scene 'toy-0'")
    assert field in message and reason in message
