"""The synthetic scene world: rooms, placement, trajectories, rendering and the scene contract."""

import numpy as np
import open3d as o3d
import pytest
import shapely

from datagen.synthetic import SyntheticConfig, generate_scene, write_synthetic_scene
from datagen.synthetic.layout import make_layout
from datagen.synthetic.render import SceneRenderer, build_scene_mesh, pinhole_intrinsics
from datagen.synthetic.vocabulary import CATEGORIES, ROOM_TYPES
from datagen.synthetic.world import sample_layout_and_trajectory
from vlm3r_core import storage
from vlm3r_core.scene import read_scene
from vlm3r_core.video import read_video

SMALL = SyntheticConfig(width=160, height=120, fps=10, duration_s=3)
SEEDS = range(25)


@pytest.fixture(scope="module")
def layouts():
    return [make_layout(np.random.default_rng([seed, 0])) for seed in SEEDS]


@pytest.fixture(scope="module")
def scenes():
    """(Scene, RenderedVideo) of three small scenes."""
    return [generate_scene(f"syn-{seed:06d}", seed, SMALL) for seed in (0, 1, 2)]


def _footprint(obj):
    """Floor rectangle of a contract object, from its box corners."""
    return shapely.MultiPoint(obj.corners()[:, :2]).convex_hull


def test_vocabulary_has_scannet_like_categories():
    assert len(CATEGORIES) >= 20
    for name in ("chair", "table", "sofa", "bed", "cabinet", "tv", "lamp", "desk", "refrigerator", "toilet"):
        assert name in CATEGORIES
    for room_type in ROOM_TYPES.values():
        names = [n for n, *_ in room_type.anchors] + [n for n, _ in room_type.fillers]
        assert set(names) <= set(CATEGORIES), room_type.name
    chair = CATEGORIES["chair"]
    assert 0.7 <= chair.size_min[2] <= chair.size_max[2] <= 1.1  # realistic heights, metres


def test_rooms_are_rectangles_or_l_shapes_within_ranges(layouts):
    vertex_counts = set()
    for layout in layouts:
        room = layout.room
        polygon = shapely.Polygon(room.floor_polygon)
        assert polygon.is_valid and polygon.exterior.is_ccw
        assert 8.0 <= room.area_m2 <= 80.0
        assert room.area_m2 == pytest.approx(polygon.area)
        assert 2.4 <= room.height <= 3.2
        assert room.floor_z == 0.0
        vertex_counts.add(len(room.floor_polygon))
        edges = np.diff(np.vstack([room.floor_polygon, room.floor_polygon[:1]]), axis=0)
        assert np.all(np.min(np.abs(edges), axis=1) < 1e-9)  # axis-aligned walls
        tiles = shapely.union_all([shapely.box(*r) for r in layout.floor_rects])
        assert tiles.symmetric_difference(polygon).area < 1e-6
    assert vertex_counts == {4, 6}  # both rectangles and L-shapes occur


def test_objects_are_inside_the_room_and_never_interpenetrate(layouts):
    counts, repeated, unique = [], 0, 0
    for layout in layouts:
        room = layout.room
        polygon = shapely.Polygon(room.floor_polygon)
        objects = [o.to_scene_object() for o in layout.objects]
        counts.append(len(objects))
        for obj in objects:
            corners = obj.corners()
            assert polygon.contains(_footprint(obj)), (obj.category, obj.center)
            assert corners[:, 2].min() >= room.floor_z - 1e-9
            assert corners[:, 2].max() <= room.floor_z + room.height
            assert np.allclose(obj.rotation[:, 2], [0, 0, 1])  # upright, rotated about Z only
        for i, a in enumerate(objects):
            for b in objects[i + 1:]:
                za, zb = a.corners()[:, 2], b.corners()[:, 2]
                z_overlap = min(za.max(), zb.max()) - max(za.min(), zb.min())
                floor_overlap = _footprint(a).intersection(_footprint(b)).area
                assert z_overlap <= 1e-6 or floor_overlap <= 1e-9, (a.category, b.category)
        names = [o.category for o in objects]
        repeated += any(names.count(n) > 1 for n in names)
        unique += sum(names.count(n) == 1 for n in set(names)) >= 2
    assert np.median(counts) >= 8 and max(counts) <= 30
    assert repeated >= 0.8 * len(layouts) and unique >= 0.8 * len(layouts)
    assert {o.category.name for layout in layouts for o in layout.objects} >= {"chair", "table", "sofa", "bed", "tv"}


def test_camera_walks_free_space_at_hand_height():
    cfg = SyntheticConfig(width=160, height=120, fps=10, duration_s=10)
    for seed in range(12):
        layout, trajectory, _ = sample_layout_and_trajectory(seed, cfg)
        poses = trajectory.cam_to_world
        assert poses.shape == (cfg.num_frames, 4, 4)
        centres = poses[:, :3, 3]
        assert np.all((centres[:, 2] >= 1.2) & (centres[:, 2] <= 1.7))
        room = shapely.Polygon(layout.room.floor_polygon)
        assert all(room.contains(shapely.Point(c[:2])) for c in centres)
        for obj in (o.to_scene_object() for o in layout.objects):
            local = (centres - obj.center) @ obj.rotation  # camera centres in the box frame
            inside = np.all(np.abs(local) <= obj.extent / 2, axis=1)
            assert not inside.any(), f"seed {seed}: camera inside {obj.category}"
        rot = poses[:, :3, :3]
        assert np.allclose(rot.transpose(0, 2, 1) @ rot, np.eye(3), atol=1e-6)
        assert np.allclose(np.linalg.det(rot), 1.0)
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=1)
        assert steps.sum() >= 2.0  # walks several metres
        assert steps.max() <= 0.15  # smooth: at most 1.5 m/s at 10 fps
        forward = rot[:, :, 2]  # optical axis in world
        turn = np.degrees(np.arccos(np.clip(np.sum(forward[1:] * forward[:-1], axis=1), -1, 1)))
        assert turn.max() < 9.0  # degrees per frame at 10 fps
        assert np.all(forward[:, 2] < 0)  # looks slightly down, like a person scanning a room


def test_visible_objects_project_into_their_stored_boxes(scenes):
    centres_inside = checked_centres = 0
    for scene, _ in scenes:
        w, h = scene.video.width, scene.video.height
        for frame in scene.frames:
            world_to_cam = np.linalg.inv(frame.cam_to_world)
            k = frame.intrinsics.matrix()
            for vis in frame.visible:
                obj = scene.object(vis.instance_id)
                points = np.vstack([obj.corners(), obj.center])
                cam = points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]  # (9, 3) OpenCV camera frame
                if np.any(cam[:8, 2] <= 0):
                    continue  # box crosses the camera plane: its projection is unbounded
                uv = (cam @ k.T)[:, :2] / cam[:, 2:3]
                lo = np.clip(uv[:8].min(axis=0), 0, [w, h])
                hi = np.clip(uv[:8].max(axis=0), 0, [w, h])
                x0, y0, x1, y1 = vis.bbox_2d
                # Every visible pixel of the object lies inside the projection of its box.
                assert lo[0] - 1 <= x0 and lo[1] - 1 <= y0 and x1 <= hi[0] + 1 and y1 <= hi[1] + 1, (scene.scene_id, frame.index, obj.category)
                if vis.pixels >= 100:
                    checked_centres += 1
                    centres_inside += x0 - 1 <= uv[8, 0] <= x1 + 1 and y0 - 1 <= uv[8, 1] <= y1 + 1
    assert checked_centres > 50
    assert centres_inside >= 0.7 * checked_centres


def test_visibility_and_depth_match_the_rendering(scenes):
    seen, total = set(), 0
    for scene, video in scenes:
        n = scene.video.num_frames
        assert video.rgb.shape == (n, 120, 160, 3) and video.depth.shape == video.instance.shape == (n, 120, 160)
        assert video.depth.min() > 0.3  # never inside or touching an object or wall
        room_diagonal = np.hypot(np.ptp(scene.room.floor_polygon, axis=0).max() * np.sqrt(2), scene.room.height)
        assert video.depth.max() < room_diagonal
        for frame, mask in zip(scene.frames, video.instance, strict=True):
            ids, counts = np.unique(mask[mask >= 0], return_counts=True)
            assert [v.instance_id for v in frame.visible] == ids.tolist()
            assert [v.pixels for v in frame.visible] == counts.tolist()
        seen |= {(scene.scene_id, v.instance_id) for f in scene.frames for v in f.visible}
        total += len(scene.objects)
        # Instances are visually distinct: two chairs (or any same-category pair) differ in colour.
        assert len({tuple(np.round(c, 3)) for c in video.rgb.reshape(-1, 3)[:: 97]}) > 20
    assert len(seen) >= 0.4 * total  # the walk sees a good part of the furniture


def test_closed_form_room_matches_ray_casting_the_whole_mesh():
    """The renderer intersects walls, floor and ceiling in closed form; Embree on all triangles agrees."""
    checked_l_shape = False
    for seed in range(8):
        layout, trajectory, rng = sample_layout_and_trajectory(seed, SMALL)
        checked_l_shape |= len(layout.room.floor_polygon) == 6
        mesh = build_scene_mesh(layout, rng)
        renderer = SceneRenderer(mesh, 80, 60, pinhole_intrinsics(80, 60, SMALL.hfov_deg))
        full = o3d.t.geometry.RaycastingScene()
        full.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.triangles))
        for pose in trajectory.cam_to_world[::6]:
            _, depth, instance = renderer.render(pose)
            hit = full.cast_rays(o3d.core.Tensor(renderer.rays))  # the rays of the frame just rendered
            assert np.mean(np.abs(hit["t_hit"].numpy() - depth) < 1e-3) > 0.999
            assert np.mean(mesh.instance[hit["primitive_ids"].numpy()] == instance) > 0.999
    assert checked_l_shape


def test_written_scene_validates_and_its_video_decodes(tmp_path):
    scene = write_synthetic_scene(str(tmp_path), "syn-000007", 7, SMALL, split="val")
    folder = tmp_path / "scenes" / "synthetic" / "syn-000007"
    loaded = read_scene(str(folder))
    assert loaded.to_dict() == scene.to_dict()
    assert (loaded.dataset, loaded.split, loaded.video.uri) == ("synthetic", "val", "video.mp4")
    assert loaded.extra["generator"]["seed"] == 7 and loaded.extra["room_type"] in ROOM_TYPES
    assert len(loaded.frames) == loaded.video.num_frames == 30
    assert loaded.frames[1].timestamp == pytest.approx(0.1)
    decoded = read_video(loaded.video_uri(str(folder)), num_samples=loaded.video.num_frames)
    assert decoded.num_frames == loaded.video.num_frames
    assert decoded.fps == pytest.approx(loaded.video.fps)
    assert decoded.frames.shape == (30, 120, 160, 3)
    _, video = generate_scene("syn-000007", 7, SMALL, split="val")
    assert np.abs(decoded.frames.astype(int) - video.rgb.astype(int)).mean() < 6  # H.264 of the rendering


def test_same_seed_gives_identical_scene_and_video(tmp_path):
    a = write_synthetic_scene(str(tmp_path / "a"), "syn-000003", 3, SMALL)
    b = write_synthetic_scene(str(tmp_path / "b"), "syn-000003", 3, SMALL)
    json_a = storage.read_bytes(str(tmp_path / "a/scenes/synthetic/syn-000003/scene.json"))
    json_b = storage.read_bytes(str(tmp_path / "b/scenes/synthetic/syn-000003/scene.json"))
    assert json_a == json_b and a.to_dict() == b.to_dict()
    video_a = storage.read_bytes(str(tmp_path / "a/scenes/synthetic/syn-000003/video.mp4"))
    video_b = storage.read_bytes(str(tmp_path / "b/scenes/synthetic/syn-000003/video.mp4"))
    assert video_a == video_b
    other, _ = generate_scene("syn-000003", 4, SMALL)
    assert other.to_dict() != a.to_dict()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"width": 161}, "even"), ({"height": 8}, "even"), ({"fps": 7.5}, "whole number"), ({"duration_s": 0}, "positive"),
     ({"fps": 1, "duration_s": 1}, "at least 2 frames"), ({"hfov_deg": 170}, "hfov_deg")],
)
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticConfig(**kwargs)
