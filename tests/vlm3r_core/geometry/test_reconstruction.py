"""3D exports: pose matrices, confidence filtering and voxels, PLY, GLB, trajectory JSON, and the
offline and live reconstructions."""

from __future__ import annotations

import json
import struct

import numpy as np
import open3d as o3d
import pytest
import torch
from scipy.spatial.transform import Rotation

from vlm3r_core import storage
from vlm3r_core.geometry import get_cut3r_config
from vlm3r_core.geometry.heads import pose_to_cam_to_world
from vlm3r_core.geometry.reconstruction import (
    COORDINATE_FRAME,
    PointCloud,
    ReconstructionConfig,
    build_point_cloud,
    encode_glb,
    reconstruct_video,
    write_ply,
)
from vlm3r_core.live import KeyframePolicy, LiveSession
from vlm3r_core.presets import get_preset
from vlm3r_core.vlm import Vlm3rForConditionalGeneration
from vlm3r_core.vlm.processor import resize_frames

SIZE = 64  # CUT3R input side of these tests: a 4x4 patch grid


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, 40, 56, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def reconstruction(tiny_full_model, frames):
    config = ReconstructionConfig(confidence_threshold=1.0, voxel_size_m=0.0)
    return reconstruct_video(tiny_full_model, frames, SIZE, timestamps=[0.0, 0.5, 1.0], frame_indices=[0, 5, 10],
                             config=config)  # fmt: skip


def test_pose_matrices_match_scipy_and_keep_the_translation():
    rng = np.random.default_rng(1)
    quat = rng.normal(size=(5, 4))
    quat /= np.linalg.norm(quat, axis=1, keepdims=True)
    poses = torch.tensor(np.concatenate([rng.normal(size=(5, 3)), quat], axis=1))
    matrices = pose_to_cam_to_world(poses).numpy()
    expected = Rotation.from_quat(quat[:, [1, 2, 3, 0]]).as_matrix()  # scipy wants (x, y, z, w)
    np.testing.assert_allclose(matrices[:, :3, :3], expected, atol=1e-12)
    np.testing.assert_array_equal(matrices[:, :3, 3], poses[:, :3].numpy())
    np.testing.assert_array_equal(matrices[:, 3], np.tile([0.0, 0.0, 0.0, 1.0], (5, 1)))


def test_confidence_filter_and_voxel_averaging():
    rng = np.random.default_rng(2)
    centres = np.arange(10)[:, None] * np.array([[5.0, 0.0, 0.0]])  # 10 clusters 5 m apart
    points = (np.repeat(centres, 100, axis=0) + rng.uniform(-0.01, 0.01, (1000, 3))).astype(np.float32)
    colors = np.repeat(np.arange(10, dtype=np.uint8)[:, None] * 20, 1000 // 10, axis=0).repeat(3, axis=1)
    confidence = rng.uniform(1.0, 5.0, 1000).astype(np.float32)
    confidence[::100] = 1.0  # one point per cluster under any threshold > 1

    kept = build_point_cloud(points, colors, confidence, ReconstructionConfig(confidence_threshold=2.0, voxel_size_m=0))
    assert len(kept) == int((confidence >= 2.0).sum())
    assert np.isin(kept.points, points[confidence >= 2.0]).all()

    voxels = build_point_cloud(points, colors, confidence, ReconstructionConfig(confidence_threshold=2.0, voxel_size_m=1.0))
    assert len(voxels) == 10  # one voxel per cluster, the mean position and colour of its points
    order = np.argsort(voxels.points[:, 0])
    np.testing.assert_allclose(voxels.points[order], centres, atol=0.011)
    np.testing.assert_array_equal(voxels.colors[order][:, 0], np.arange(10) * 20)

    with pytest.raises(ValueError, match="no point reaches confidence 9"):
        build_point_cloud(points, colors, confidence, ReconstructionConfig(confidence_threshold=9.0))


@pytest.mark.parametrize(
    ("config", "message"),
    [(dict(confidence_threshold=0.5), "confidence_threshold"), (dict(voxel_size_m=-1.0), "voxel_size_m"),
     (dict(max_points_per_frame=-1), "max_points_per_frame")],
)  # fmt: skip
def test_bad_reconstruction_settings_are_rejected(config, message):
    with pytest.raises(ValueError, match=message):
        ReconstructionConfig(**config)


def test_reconstruct_video_keeps_every_confident_pixel_coloured_by_its_input(tiny_full_model, frames, reconstruction):
    assert len(reconstruction.cloud) == 3 * SIZE * SIZE  # threshold 1 and no voxels keep every pixel
    out = tiny_full_model.encode_video(resize_frames(torch.as_tensor(frames), SIZE)[None])
    np.testing.assert_array_equal(reconstruction.cloud.points, out.pointmaps.points_in_world[0].reshape(-1, 3).numpy())
    expected_colors = ((resize_frames(torch.as_tensor(frames), SIZE) + 1) * 127.5).round().permute(0, 2, 3, 1)
    np.testing.assert_array_equal(reconstruction.cloud.colors, expected_colors.reshape(-1, 3).numpy().astype(np.uint8))

    high = float(out.pointmaps.confidence_in_world.median())
    filtered = reconstruct_video(tiny_full_model, frames, SIZE, config=ReconstructionConfig(high, voxel_size_m=0))
    assert len(filtered.cloud) == int((out.pointmaps.confidence_in_world >= high).sum())
    subset = reconstruct_video(
        tiny_full_model, frames, SIZE, config=ReconstructionConfig(1.0, voxel_size_m=0, max_points_per_frame=100)
    )
    assert len(subset.cloud) == 3 * 100


def test_trajectory_is_metric_camera_to_world_in_cut3rs_frame(tiny_full_model, frames, reconstruction):
    trajectory = reconstruction.trajectory
    out = tiny_full_model.encode_video(resize_frames(torch.as_tensor(frames), SIZE)[None])
    assert trajectory.cam_to_world.shape == (3, 4, 4)
    rotations = trajectory.cam_to_world[:, :3, :3]
    np.testing.assert_allclose(rotations @ rotations.transpose(0, 2, 1), np.tile(np.eye(3), (3, 1, 1)), atol=1e-6)
    np.testing.assert_allclose(np.linalg.det(rotations), 1.0, atol=1e-6)
    # Units: the translation column is the pose head's metric camera centre, unchanged.
    np.testing.assert_array_equal(trajectory.cam_to_world[:, :3, 3], out.poses[0, :, :3].double().numpy())

    data = json.loads(json.dumps(trajectory.to_json()))
    assert data["coordinate_frame"] == COORDINATE_FRAME
    assert data["coordinate_frame"]["units"] == "metres" and "OpenCV" in data["coordinate_frame"]["axes"]
    assert "Z-up" in data["coordinate_frame"]["description"]
    assert [c["frame_index"] for c in data["cameras"]] == [0, 5, 10]
    assert [c["timestamp_s"] for c in data["cameras"]] == [0.0, 0.5, 1.0]
    assert np.array(data["cameras"][1]["cam_to_world"]).shape == (4, 4)


def test_reconstruct_video_needs_the_point_heads(tiny_model, frames):
    with pytest.raises(ValueError, match="point and pose heads"):
        reconstruct_video(tiny_model, frames, SIZE)


def test_ply_reads_back_in_open3d(tmp_path, reconstruction):
    cloud = reconstruction.cloud
    write_ply(cloud, str(tmp_path / "points.ply"))
    back = o3d.io.read_point_cloud(str(tmp_path / "points.ply"))
    assert len(back.points) == len(cloud)
    np.testing.assert_allclose(np.asarray(back.points), cloud.points, rtol=0, atol=1e-6)
    np.testing.assert_array_equal((np.asarray(back.colors) * 255).round().astype(np.uint8), cloud.colors)


def parse_glb(data: bytes) -> tuple[dict, bytes]:
    """An independent reading of the GLB container (glTF 2.0 spec, "Binary glTF Layout")."""
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    json_length, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == 0x4E4F534A and json_length % 4 == 0
    gltf = json.loads(data[20 : 20 + json_length])
    bin_length, bin_type = struct.unpack_from("<II", data, 20 + json_length)
    assert bin_type == 0x004E4942 and bin_length % 4 == 0
    assert 28 + json_length + bin_length == len(data)
    return gltf, data[28 + json_length :]


def test_glb_is_a_valid_point_cloud_gltf(reconstruction):
    cloud = reconstruction.cloud
    gltf, binary = parse_glb(encode_glb(cloud))
    assert gltf["asset"]["version"] == "2.0"
    assert gltf["asset"]["extras"]["coordinate_frame"] == COORDINATE_FRAME
    primitive = gltf["meshes"][0]["primitives"][0]
    assert primitive["mode"] == 0  # POINTS
    position = gltf["accessors"][primitive["attributes"]["POSITION"]]
    color = gltf["accessors"][primitive["attributes"]["COLOR_0"]]
    assert position["count"] == color["count"] == len(cloud)
    assert (position["componentType"], position["type"]) == (5126, "VEC3")
    assert (color["componentType"], color["type"], color["normalized"]) == (5121, "VEC4", True)
    assert position["min"] == cloud.points.min(axis=0).tolist() and position["max"] == cloud.points.max(axis=0).tolist()
    assert gltf["buffers"][0]["byteLength"] <= len(binary)
    views = gltf["bufferViews"]
    for view in views:
        assert view["byteOffset"] % 4 == 0 and view["byteOffset"] + view["byteLength"] <= gltf["buffers"][0]["byteLength"]
    pos_view, col_view = views[position["bufferView"]], views[color["bufferView"]]
    positions = np.frombuffer(binary, "<f4", len(cloud) * 3, pos_view["byteOffset"]).reshape(-1, 3)
    rgba = np.frombuffer(binary, np.uint8, len(cloud) * 4, col_view["byteOffset"]).reshape(-1, 4)
    np.testing.assert_array_equal(positions, cloud.points)  # CUT3R world, unchanged
    np.testing.assert_array_equal(rgba[:, :3], cloud.colors)
    assert (rgba[:, 3] == 255).all()
    node = gltf["nodes"][gltf["scenes"][gltf["scene"]]["nodes"][0]]
    assert np.array(node["matrix"]).reshape(4, 4).T.tolist() == np.diag([1.0, -1.0, -1.0, 1.0]).tolist()

    with pytest.raises(ValueError, match="at least one point"):
        encode_glb(PointCloud(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)))


def test_reconstruction_writes_its_three_files(tmp_path, reconstruction):
    uris = reconstruction.write(str(tmp_path / "out"))
    assert sorted(uris) == ["glb", "ply", "trajectory"]
    assert storage.read_json(uris["trajectory"])["points"] == len(reconstruction.cloud)
    gltf, _ = parse_glb(storage.read_bytes(uris["glb"]))
    assert gltf["accessors"][0]["count"] == len(reconstruction.cloud)
    assert len(o3d.io.read_point_cloud(uris["ply"]).points) == len(reconstruction.cloud)


def test_a_live_session_reconstructs_its_keyframes_like_the_offline_path(tiny_full_model, frames):
    """The same CUT3R weights in a VLM with point heads: a session that kept every frame and every
    pixel gives the offline cloud exactly; a bounded one keeps at most K x n points."""
    config = get_preset("tiny", cut3r=get_cut3r_config("tiny", enable_point_heads=True), cut3r_image_size=SIZE)
    model = Vlm3rForConditionalGeneration.from_config(config, components=("vision_tower", "cut3r"))
    model.cut3r.load_state_dict(tiny_full_model.state_dict())
    everything = ReconstructionConfig(confidence_threshold=1.0, voxel_size_m=0.0)

    session = LiveSession(model, KeyframePolicy(max_keyframes=3, points_per_keyframe=SIZE * SIZE))
    for i, frame in enumerate(frames):
        session.push(frame, i * 0.5)
    live = session.reconstruct(everything)
    offline = reconstruct_video(tiny_full_model, frames, SIZE, timestamps=[0.0, 0.5, 1.0], config=everything)
    np.testing.assert_array_equal(live.cloud.points, offline.cloud.points)
    np.testing.assert_array_equal(live.cloud.colors, offline.cloud.colors)
    np.testing.assert_array_equal(live.trajectory.cam_to_world, offline.trajectory.cam_to_world)

    bounded = LiveSession(model, KeyframePolicy(max_keyframes=2, points_per_keyframe=50))
    for i, frame in enumerate(np.concatenate([frames, frames])):
        bounded.push(frame, i * 0.5)
    assert len(bounded.keyframes) == 2
    assert len(bounded.reconstruct(everything).cloud) == 2 * 50
    assert bounded.trajectory().frame_indices == (0, 5)  # the first update and the latest

    plain = LiveSession(Vlm3rForConditionalGeneration.from_config(get_preset("tiny"), components=("vision_tower", "cut3r")))
    plain.push(frames[0], 0.0)
    with pytest.raises(ValueError, match="point heads"):
        plain.reconstruct()
