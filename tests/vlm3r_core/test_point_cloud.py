"""The 3D viewer's input: a scene's annotated layout as points, colours and cameras, and its JSON form."""

import json

import numpy as np
import pytest

from tests.datagen.scene_builder import box, look_at, make_scene
from vlm3r_core.point_cloud import FLOOR_COLOUR, PointCloud, category_colour, scene_point_cloud
from vlm3r_core.video import sample_frame_indices


def _scene():
    objects = [box(1, "bed", (2.0, 2.0, 0.3), (2.0, 1.6, 0.6), yaw_deg=30), box(2, "chair", (4.5, 3.5, 0.45), (0.5, 0.5, 0.9))]
    poses = [look_at((0.5 + 0.05 * i, 0.5, 1.5), (3.0, 3.0, 0.5)) for i in range(50)]
    return make_scene(objects, poses, room_size=(6.0, 5.0))


def test_layout_points_lie_on_the_boxes_and_the_floor():
    scene = _scene()
    cloud = scene_point_cloud(scene, num_points=5000, num_cameras=8)
    on_floor = (cloud.colors == FLOOR_COLOUR).all(axis=1)
    assert 900 <= on_floor.sum() <= 1000  # a fifth of the points
    floor = cloud.points[on_floor]
    assert np.allclose(floor[:, 2], 0.0) and (floor[:, :2] >= 0).all() and (floor[:, :2] <= [6.0, 5.0]).all()
    for obj in scene.objects:
        mine = (cloud.colors == category_colour(obj.category)).all(axis=1)
        local = np.abs((cloud.points[mine] - obj.center) @ obj.rotation) / (obj.extent / 2)  # (M, 3), box units
        assert mine.sum() > 500
        assert np.allclose(local.max(axis=1), 1.0, atol=1e-4)  # on a face of the box, not inside it
    picked = sample_frame_indices(50, 8)
    np.testing.assert_allclose(cloud.cameras, np.stack([scene.frames[i].cam_to_world for i in picked]))
    assert "synthetic/toy" in cloud.source


def test_json_round_trip_and_errors_name_the_field():
    cloud = scene_point_cloud(_scene(), num_points=300, num_cameras=4)
    data = json.loads(json.dumps(cloud.to_json()))
    assert set(data) == {"points", "colors", "cameras", "source"}
    back = PointCloud.from_json(data)
    np.testing.assert_allclose(back.points, cloud.points, atol=1e-3)
    assert (back.colors == cloud.colors).all() and back.cameras.shape == (4, 4, 4)
    with pytest.raises(ValueError, match="colors must be"):
        PointCloud.from_json({**data, "colors": data["colors"][:-1]})
    with pytest.raises(ValueError, match="cameras"):
        PointCloud.from_json({**data, "cameras": [[1, 2, 3]]})
    with pytest.raises(ValueError, match="0-255"):
        PointCloud.from_json({**data, "colors": [[300, 0, 0]] * len(data["points"])})


def test_a_reconstruction_is_shown_upright_with_its_distances():
    from vlm3r_core.geometry.reconstruction import CameraTrajectory, Reconstruction
    from vlm3r_core.geometry.reconstruction import PointCloud as Cloud
    from vlm3r_core.point_cloud import reconstruction_point_cloud

    # CUT3R's world: the first camera, y down, z forward. A point 2 m ahead and 1 m above it,
    # a second camera 1 m to the right.
    points = np.array([[0.0, -1.0, 2.0], [0.5, 0.0, 1.0]], np.float32)
    second = np.eye(4)
    second[0, 3] = 1.0
    rec = Reconstruction(
        Cloud(points, np.full((2, 3), 200, np.uint8)),
        CameraTrajectory(np.stack([np.eye(4), second]), (0.0, 1.0), (0, 10)),
    )
    cloud = reconstruction_point_cloud(rec, "test")
    np.testing.assert_allclose(cloud.points[0], [0.0, 2.0, 1.0])  # ahead is +y, above is +z
    np.testing.assert_allclose(np.linalg.norm(cloud.points[1] - cloud.points[0]), np.linalg.norm(points[1] - points[0]), rtol=1e-6)
    np.testing.assert_allclose(cloud.cameras[1][:3, 3], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(cloud.cameras[0][:3, 1], [0.0, 0.0, -1.0])  # the camera's down axis points down
    assert cloud.source == "test" and cloud.colors.tolist() == [[200] * 3] * 2
