"""Question vocabulary: the benchmark's lists and merges, applied to every task through the scene graph."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest

from datagen.dataset import write_outputs
from datagen.qa import QAConfig, generate_scene_rows, process_scene
from datagen.routing.builtin import FloorPlan
from datagen.scene_graph import SceneGraph
from datagen.tasks import route_planning as rp
from datagen.vocabulary import question_vocabulary, vocabulary_tables
from jobs.generate_qa import parse_args
from tests.datagen.scene_builder import box, look_at, make_scene, random_scene, write_scene_with_video
from vlm3r_core import storage
from vlm3r_core.scene import DATASETS, list_scenes

# One raw ScanNet label per object of a random room (18 boxes); none of the OUT_OF_VOCABULARY ones
# may ever be named under "vsibench", "trash can" + "recycling bin" count as 2 "trash bin"s and
# "mouse" is asked as "computer mouse".
SCANNET_LABELS = [
    "chair", "office chair", "trash can", "recycling bin", "wall", "kitchen cabinets", "bed", "sofa", "table",
    "tv", "lamp", "door", "chair", "office chair", "mouse", "bookshelf", "kitchen cabinets", "window",
]  # fmt: skip
OUT_OF_VOCABULARY = ["office chair", "kitchen cabinets", "trash can", "recycling bin", "wall"]


def _scannet_room(seed: int = 0):
    base = random_scene(np.random.default_rng(seed), len(SCANNET_LABELS), 64, scene_id="scene0000_00")
    objects = tuple(
        dataclasses.replace(o, category=label) for o, label in zip(base.objects, SCANNET_LABELS, strict=True)
    )
    return dataclasses.replace(base, dataset="scannet", objects=objects)


def _rows(scene, vocabulary: str) -> list[dict]:
    config = QAConfig(route_planner="builtin", default_cap=100, vocabulary=vocabulary)
    return generate_scene_rows(scene, "video.mp4", config)


def _named(rows: list[dict]) -> dict[str, set[str]]:
    """Question type -> the raw labels of OUT_OF_VOCABULARY (and a bare "mouse") its rows name."""
    found: dict[str, set[str]] = {}
    for r in rows:
        text = " | ".join([r["question"], *r["choices"], r["answer"]])
        labels = {w for w in OUT_OF_VOCABULARY if re.search(rf"\b{w}\b", text)}
        if re.search(r"\bmouse\b", text.replace("computer mouse", "")):
            labels.add("mouse")
        if labels:
            found.setdefault(r["question_type"], set()).update(labels)
    return found


def test_benchmark_lists_and_merges():
    scannet = question_vocabulary("scannet", "vsibench")
    assert len(scannet.labels) == 36 and len(set(scannet.table().values())) == 34
    assert [scannet.name(x) for x in ("trash can", "recycling bin", "trash bin", "mouse", "desk")] == [
        "trash bin",
        "trash bin",
        "trash bin",
        "computer mouse",
        "desk",  # not merged into table
    ]
    assert scannet.name("office chair") is None and scannet.name("Chair") is None  # exact names only
    scannetpp = question_vocabulary("scannetpp", "vsibench")
    assert len(scannetpp.labels) == 49 and len(set(scannetpp.table().values())) == 48
    assert scannetpp.name("office chair") == "chair" and scannetpp.name("ceiling lamp") == "ceiling light"
    assert scannetpp.name("kitchen cabinet") is None and scannetpp.name("trash can") == "trash can"
    arkit = question_vocabulary("arkitscenes", "vsibench")
    assert sorted(arkit.table().values()) == [
        "bathtub", "bed", "chair", "dishwasher", "fireplace", "refrigerator", "sofa", "stool", "stove",
        "table", "toilet", "tv", "washer",
    ]  # fmt: skip
    for dataset in DATASETS:  # "all" keeps every raw label as it is
        assert question_vocabulary(dataset, "all").name("office chair") == "office chair"
    assert question_vocabulary("synthetic", "vsibench").name("anything") == "anything"
    assert set(vocabulary_tables("vsibench")) == set(DATASETS)
    with pytest.raises(ValueError, match="unknown vocabulary"):
        question_vocabulary("scannet", "scannet200")
    with pytest.raises(ValueError, match="vocabulary must be one of"):
        QAConfig(vocabulary="everything")


def test_scannet_rows_name_only_the_benchmark_vocabulary():
    scene = _scannet_room()
    graph = SceneGraph(scene)
    assert graph.category_counts["trash bin"] == 2 and graph.category_counts["chair"] == 2
    assert "office chair" not in graph.category_counts and "wall" not in graph.category_counts
    assert all(set(f.visible) <= set(graph.instances) for f in graph.frames)

    rows = _rows(scene, "vsibench")
    counting = {r["question"]: r["answer"] for r in rows if r["question_type"] == "object_counting"}
    assert counting == {
        "How many chair(s) are in this room?": "2",
        "How many trash bin(s) are in this room?": "2",
    }
    assert _named(rows) == {}
    assert any("computer mouse" in r["question"] for r in rows)

    # The same room with every raw label: the same tasks do name them (the check above can fail).
    raw = _named(_rows(scene, "all"))
    assert raw["object_size_estimation"] == {"trash can", "recycling bin", "wall", "mouse"}
    assert {
        "object_counting",
        "object_rel_distance",
        "object_rel_direction_hard",
        "object_abs_distance",
    } <= set(raw)
    assert {
        "camera_obj_abs_dist",
        "camera_obj_rel_dist_v1",
        "obj_obj_relative_pos_lr",
        "route_planning",
    } <= set(raw)


def test_appearance_order_never_lists_unnamed_categories():
    objects = [
        box(1, "bed", (1, 1, 0.3), (2, 1.6, 0.6)),
        box(2, "office chair", (1, 3.5, 0.45), (0.5, 0.5, 0.9)),
        box(3, "sofa", (4.5, 1, 0.4), (2, 1, 0.8)),
        box(4, "kitchen cabinets", (5.5, 4, 0.5), (0.6, 1.5, 1.0)),
        box(5, "tv", (3, 4.5, 1.0), (1.2, 0.2, 0.7)),
        box(6, "trash can", (0.3, 4.6, 0.3), (0.3, 0.3, 0.6)),
        box(7, "table", (3, 2.8, 0.4), (1, 0.8, 0.8)),
    ]
    first_seen = {i: 9 * (i - 1) for i in range(1, 8)}  # video frame (2 fps) of each instance's first sight
    visible = [[i for i, first in first_seen.items() if first <= f] for f in range(64)]
    scene = make_scene(
        objects, [look_at((3, 0.1, 1.5), (3, 4, 0.8))] * 64, fps=2.0, visible=visible, dataset="scannet"
    )
    graph = SceneGraph(scene)
    assert sorted(graph.first_appearances()) == ["bed", "sofa", "table", "trash bin", "tv"]
    config = QAConfig(tasks=("obj_appearance_order",), default_cap=100)
    rows = generate_scene_rows(scene, "video.mp4", config)
    assert rows and _named(rows) == {}
    raw = generate_scene_rows(scene, "video.mp4", dataclasses.replace(config, vocabulary="all"))
    assert _named(raw)["obj_appearance_order"] == {"office chair", "kitchen cabinets", "trash can"}


def test_route_landmarks_are_named_objects_and_unnamed_ones_still_block():
    # The route of tests/datagen/tasks/test_task_route_planning.py, as a ScanNet room whose cabinet
    # (the landmark of the second turn) is "kitchen cabinets", outside the benchmark's vocabulary.
    objects = [
        box(1, "bookshelf", (2, 2.25, 1.0), (4, 0.5, 2.0)),
        box(2, "kitchen cabinets", (2, 3.0, 0.5), (4, 1.0, 1.0)),
        box(3, "plant", (0.25, 1.0, 0.5), (0.3, 0.6, 1.0)),
        box(4, "desk", (1.0, 5.5, 0.4), (1.6, 0.8, 0.8)),
        box(5, "window", (0.05, 1.0, 2.1), (0.1, 1.0, 0.8)),
    ]
    scene = make_scene(
        objects, [look_at((5, 5, 1.5), (1, 1, 0.5))], room_size=(6.0, 6.0), visible=[[]], dataset="scannet"
    )
    plan = FloorPlan(scene)
    named, raw = SceneGraph(scene), SceneGraph(scene, vocabulary="all")
    path = rp.plan_route(named, plan, "plant", "desk")
    # The unnamed cabinet is still an obstacle: the way goes around its right end as before.
    np.testing.assert_allclose(path, [[0.6, 1.0], [4.2, 1.8], [4.2, 3.7], [1.0, 4.9]], atol=1e-9)
    assert (
        "4. Go forward until the kitchen cabinets."
        in rp.describe_route(raw, plan, "plant", "window", "desk", path).actions
    )
    assert rp.describe_route(named, plan, "plant", "window", "desk", path) is None  # no named landmark there
    items = rp.generate(raw, np.random.default_rng(0), cap=20, planner="builtin")
    assert any("kitchen cabinets" in item.question for item in items)
    assert not any(
        "kitchen cabinets" in item.question
        for item in rp.generate(named, np.random.default_rng(0), cap=20, planner="builtin")
    )


def test_synthetic_rows_do_not_depend_on_the_vocabulary():
    scene = random_scene(np.random.default_rng(3), 14, 64)
    assert _rows(scene, "vsibench") == _rows(scene, "all")


def test_job_flag_cache_key_and_manifest(tmp_path):
    assert parse_args(["--scenes", "s", "--out", "o"]).qa.vocabulary == "vsibench"
    config = parse_args(
        ["--scenes", "s", "--out", "o", "--vocabulary", "all", "--tasks", "object_counting"]
    ).qa
    assert config.vocabulary == "all"
    assert dataclasses.replace(config, vocabulary="vsibench").fingerprint() != config.fingerprint()

    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    write_scene_with_video(_scannet_room(), root)
    scenes = list_scenes(root)
    for vocabulary, asked in (("all", "office chair"), ("vsibench", "trash bin")):
        config = dataclasses.replace(config, vocabulary=vocabulary)
        assert process_scene(scenes[0], out, config).error is None
        write_outputs(out, config, scenes, [])
        manifest = storage.read_json(f"{out}/qa/manifest.json")
        assert manifest["vocabulary"] == vocabulary
        questions = storage.read_parquet(f"{out}/qa/benchmark/train").column("question").to_pylist()
        assert any(asked in q for q in questions)
    assert manifest["vocabulary_names"]["scannet"]["recycling bin"] == "trash bin"
    assert "office chair" not in manifest["vocabulary_names"]["scannet"]
    assert manifest["vocabulary_names"]["synthetic"] is None
