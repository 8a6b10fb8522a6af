"""ScanNet visibility from the release's 2D instance masks (``<scene>_2d-instance-filt.zip``).

The scan's colour frames are 1296 x 968 (as ScanNet's) and the hand-made masks 640 x 480, so every
box and pixel count below is checked after scaling into the colour/video frame. Mask value v is the
segGroup with ``id`` v - 1 (fixture groups: floor 0, wall 1, table 2, ghost 3 without geometry).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile

import numpy as np
import pytest
import source_fixtures as sf
from PIL import Image

from datagen.readers import read_source_scene
from datagen.readers.common import SourceFormatError
from datagen.visibility import BACKGROUND, visibility_from_mask
from vlm3r_core.scene import Visibility

SCENE = "scene0000_00"
COLOUR_W, COLOUR_H = 1296, 968
MASK_W, MASK_H = 640, 480
SX, SY = COLOUR_W / MASK_W, COLOUR_H / MASK_H  # 2.025, 2.0167
FLOOR, WALL, TABLE, GHOST = 1, 2, 3, 4  # mask values: segGroup id + 1
TABLE_ID = 2  # the table's objectId


def blank() -> np.ndarray:
    return np.zeros((MASK_H, MASK_W), dtype=np.uint8)


def frame_0_mask() -> np.ndarray:
    """Table in rows 100..149, columns 200..299; wall, ghost and an unknown value elsewhere."""
    mask = blank()
    mask[:50] = WALL
    mask[100:150, 200:300] = TABLE
    mask[400:410, :10] = GHOST  # an annotation without geometry: not an object of the scene
    mask[300:310, 600:] = 200  # names no segGroup
    return mask


# The table's box and pixel count in frame 0, in 1296 x 968 video pixels.
TABLE_BOX = (200 * SX, 100 * SY, 300 * SX, 150 * SY)
TABLE_PIXELS = round(50 * 100 * SX * SY)


@pytest.fixture
def scan(tmp_path):
    return sf.write_scannet_scene(tmp_path / "scans", SCENE, colour_size=(COLOUR_W, COLOUR_H))


def masks_for_frames_0_10_20() -> dict[int, np.ndarray]:
    wall_only = blank()
    wall_only[:] = WALL  # the geometry shows the table in frame 10; its mask does not
    return {0: frame_0_mask(), 10: wall_only, 20: frame_0_mask()}  # 20 has a -inf pose; 30 no mask


@pytest.mark.parametrize("extracted", [False, True], ids=["zip", "extracted-folder"])
def test_masks_drive_visibility_scaled_to_the_colour_frame(scan, extracted, caplog):
    where = sf.write_scannet_instance_masks(scan, masks_for_frames_0_10_20(), extracted=extracted)
    with caplog.at_level(logging.INFO, logger="datagen.readers"):
        result = read_source_scene("scannet", str(scan), SCENE, "val")
    scene = result.scene
    assert (scene.video.width, scene.video.height) == (COLOUR_W, COLOUR_H)
    assert scene.extra["source"]["frames"] == ["0", "10", "30"]  # 20 dropped for its pose

    (table,) = scene.frames[0].visible  # wall, ghost and value 200 are ignored
    assert table.instance_id == TABLE_ID
    assert table.bbox_2d == pytest.approx(TABLE_BOX)
    assert table.pixels == TABLE_PIXELS == 20419
    assert scene.frames[1].visible == ()  # from the mask, not from the geometry

    (cast,) = scene.frames[2].visible  # no mask for frame 30: ray-cast
    u, v = sf.project(sf.TABLE_CENTER, scene.frames[2].cam_to_world)  # in the 32 x 24 fixture camera
    u, v = u * COLOUR_W / sf.WIDTH, v * COLOUR_H / sf.HEIGHT
    x0, y0, x1, y1 = cast.bbox_2d
    assert cast.instance_id == TABLE_ID and x0 <= u <= x1 and y0 <= v <= y1

    assert scene.extra["source"]["visibility"] == {"instance_masks": 2, "ray_cast": 1}
    assert scene.extra["source"]["instance_masks"] == str(where)
    assert "visibility of 2 frames from instance masks" in caplog.text
    assert "mask values [200] name no segGroup" in caplog.text


def test_mask_values_are_segment_group_ids_plus_one_not_list_positions(scan):
    agg = scan / f"{SCENE}.aggregation.json"
    data = json.loads(agg.read_text())
    data["segGroups"] = data["segGroups"][::-1]  # table (id 2) is now the 2nd group, floor (id 0) the 4th
    agg.write_text(json.dumps(data))
    mask = blank()
    mask[100:150, 200:300] = TABLE  # id 2 + 1
    mask[200:220, 10:20] = FLOOR  # id 0 + 1: structure, not an object
    sf.write_scannet_instance_masks(scan, {0: mask})
    scene = read_source_scene("scannet", str(scan), SCENE, "val").scene
    (table,) = scene.frames[0].visible
    assert (table.instance_id, table.pixels) == (TABLE_ID, TABLE_PIXELS)
    assert table.bbox_2d == pytest.approx(TABLE_BOX)


def test_without_masks_every_frame_is_ray_cast(scan):
    scene = read_source_scene("scannet", str(scan), SCENE, "val").scene
    assert scene.extra["source"]["visibility"] == {"instance_masks": 0, "ray_cast": 3}
    assert scene.extra["source"]["instance_masks"] is None
    for frame in scene.frames:
        (vis,) = frame.visible
        assert vis.instance_id == TABLE_ID
        x0, y0, x1, y1 = vis.bbox_2d
        assert 0 <= x0 < x1 <= COLOUR_W and 0 <= y0 < y1 <= COLOUR_H


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def write_zip(scan, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(scan / f"{SCENE}_2d-instance-filt.zip", "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_bad_masks_raise_errors_naming_the_scene_file_and_reason(scan):
    zip_name = f"{SCENE}_2d-instance-filt.zip"
    good = png_bytes(frame_0_mask())
    write_zip(scan, {"instance-filt/0.png": good, "instance-filt/10.png": good[: len(good) // 2]})
    with pytest.raises(
        SourceFormatError,
        match=rf"scans/{SCENE}/{zip_name}/instance-filt/10.png: cannot decode instance mask PNG \(.*truncated",
    ):
        read_source_scene("scannet", str(scan), SCENE, "val")

    write_zip(scan, {"instance-filt/0.png": png_bytes(np.zeros((MASK_H, MASK_W, 3), np.uint8))})
    with pytest.raises(
        SourceFormatError, match=r"instance-filt/0.png: expected an 8-bit single-channel PNG, got mode 'RGB'"
    ):
        read_source_scene("scannet", str(scan), SCENE, "val")

    write_zip(scan, {"instance-filt/0.png": png_bytes(np.zeros((MASK_W, MASK_H), np.uint8))})  # portrait
    with pytest.raises(
        SourceFormatError, match=r"mask is 480x640, not a resize of the 1296x968 colour frames"
    ):
        read_source_scene("scannet", str(scan), SCENE, "val")

    (scan / zip_name).write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(SourceFormatError, match=rf"{zip_name}: not a valid zip archive"):
        read_source_scene("scannet", str(scan), SCENE, "val")

    (scan / zip_name).unlink()
    folder = sf.write_scannet_instance_masks(scan, {0: frame_0_mask()}, extracted=True)
    (folder / "0.png").write_bytes(good[:40])
    with pytest.raises(
        SourceFormatError, match=rf"scans/{SCENE}/instance-filt/0.png: cannot decode instance mask PNG"
    ):
        read_source_scene("scannet", str(scan), SCENE, "val")


def test_mask_visibility_scaled_to_the_video_matches_per_pixel_scaling():
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 6, size=(48, 64)).astype(np.uint8)  # speckle: boxes span most of the frame
    for value in range(6, 30):  # and blobs: tight boxes
        y, x = rng.integers(0, 40), rng.integers(0, 56)
        mask[y : y + rng.integers(1, 8), x : x + rng.integers(1, 8)] = value
    lut = np.full(256, BACKGROUND, dtype=np.int64)
    lut[1:30] = rng.permutation(np.arange(100, 129))  # instance ids in another order than values
    lut[[3, 17]] = BACKGROUND  # e.g. wall and floor
    width, height = 130, 97
    sx, sy = width / 64, height / 48
    expected = tuple(
        Visibility(
            v.instance_id,
            (v.bbox_2d[0] * sx, v.bbox_2d[1] * sy, v.bbox_2d[2] * sx, v.bbox_2d[3] * sy),
            round(v.pixels * sx * sy),
        )
        for v in visibility_from_mask(lut[mask])
    )
    assert len(expected) == 27
    assert visibility_from_mask(lut[mask], size=(width, height)) == expected
