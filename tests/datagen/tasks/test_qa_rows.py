"""datagen.qa: per-scene rows and seeding, global letter balancing, conversations, output files."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from datagen.qa import (
    QAConfig,
    assign_letters,
    conversation,
    find_scenes,
    generate_scene_rows,
    process_scene,
    scene_cache_uri,
    write_outputs,
)
from tests.datagen.scene_builder import random_scene
from vlm3r_core import storage
from vlm3r_core.prompting import PromptConfig
from vlm3r_core.scene import write_scene


@pytest.fixture(scope="module")
def scene():
    return random_scene(np.random.default_rng(3), num_objects=16, num_frames=64, scene_id="room-a")


def test_scene_rows_are_deterministic_and_independent_per_task(scene):
    config = QAConfig(seed=7, default_cap=4)
    rows = generate_scene_rows(scene, "v.mp4", config)
    assert rows == generate_scene_rows(scene, "v.mp4", config)
    assert [r["id"] for r in rows] == sorted({r["id"] for r in rows})
    assert {r["question_type"] for r in rows} >= {
        "object_counting",
        "object_abs_distance",
        "camera_displacement",
    }
    # A task's rows depend only on (seed, scene, task): running it alone gives the same rows.
    alone = generate_scene_rows(
        scene, "v.mp4", QAConfig(tasks=("object_rel_distance",), seed=7, default_cap=4)
    )
    assert alone == [r for r in rows if r["question_type"].startswith("object_rel_distance")]
    other_seed = generate_scene_rows(scene, "v.mp4", QAConfig(seed=8, default_cap=4))
    assert other_seed != rows


def _mc_row(i, n=4, question_type="object_rel_direction_hard"):
    choices = [f"c{k}" for k in range(n)]
    return {
        "id": f"synthetic/s{i % 7}/{question_type}/{i:04d}",
        "dataset": "synthetic",
        "scene_name": f"s{i % 7}",
        "question_type": question_type,
        "question": "Which?",
        "choices": choices,
        "answer": choices[0],
        "choices_in_question": False,
        "frame_indices": [],
        "video": "v.mp4",
        "split": "train",
        "seed": 0,
        "generator_version": "g",
    }


def test_letters_are_balanced_over_the_whole_run_whatever_the_row_order():
    rows = [_mc_row(i) for i in range(103)] + [
        _mc_row(i, n=3, question_type="object_rel_direction_medium") for i in range(31)
    ]
    out = assign_letters(rows, seed=0)
    hard = Counter(r["mc_answer"] for r in out if r["question_type"] == "object_rel_direction_hard")
    medium = Counter(r["mc_answer"] for r in out if r["question_type"] == "object_rel_direction_medium")
    assert max(hard.values()) - min(hard.values()) <= 1 and set(hard) == set("ABCD")
    assert max(medium.values()) - min(medium.values()) <= 1 and set(medium) == set("ABC")
    for r in out:
        letter = r["ground_truth"]
        assert r["mc_answer"] == letter and r["options"][ord(letter) - ord("A")] == f"{letter}. c0"
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    assert assign_letters(shuffled, seed=0) == out


def test_questions_listing_choices_follow_the_option_order(scene):
    rows = generate_scene_rows(
        scene, "v.mp4", QAConfig(tasks=("object_rel_distance", "camera_movement_direction"))
    )
    for row in assign_letters(rows, seed=0):
        listed = row["question"].split("(")[1].split(")")[0] if "(" in row["question"] else None
        names = [o.split(". ", 1)[1] for o in row["options"]]
        if row["question_type"].startswith("object_rel_distance"):
            assert listed == ", ".join(names)
        else:
            assert (
                "The options are "
                + (", ".join(names[:-1]) + (", and " if len(names) > 2 else " and ") + names[-1])
                in row["question"]
            )


def test_numeric_rows_and_conversations(scene):
    rows = assign_letters(
        generate_scene_rows(
            scene, "s3://b/v.mp4", QAConfig(tasks=("room_size_estimation", "object_rel_direction"))
        ),
        seed=0,
    )
    room = next(r for r in rows if r["question_type"] == "room_size_estimation")
    assert room["options"] == [] and room["mc_answer"] is None and room["ground_truth"] == "48.0"
    timestamps = (np.linspace(0, 63, 32, dtype=int) / 10.0).tolist()
    conv = conversation(room, timestamps, 6.4, PromptConfig())
    assert conv["video_id"] == "synthetic/room-a" and conv["video"] == "s3://b/v.mp4"
    # What training renders its prompt from (with the model's PromptConfig and the token row's times).
    assert (conv["question"], conv["options"], conv["answer"]) == (room["question"], [], "48.0")
    human, gpt = conv["conversations"]
    assert human["value"].startswith(
        "<image>\nThe video lasts for 6.40 seconds, and 32 frames are uniformly sampled"
    )
    assert human["value"].endswith(
        room["question"] + "\nPlease answer the question using a single word or phrase."
    )
    assert gpt == {"from": "gpt", "value": "48.0"}
    order = next(r for r in rows if r["question_type"] == "object_rel_direction_hard")
    conv = conversation(order, timestamps, 6.4, PromptConfig())
    assert conv["conversations"][1]["value"] == conv["answer"] == order["mc_answer"] and order["mc_answer"] in "ABCD"
    assert conv["options"] == order["options"] and len(order["options"]) == 4


def test_the_frame_count_comes_from_the_model_preset():
    assert (QAConfig().preset, QAConfig().num_frames) == ("tiny", 32)
    assert QAConfig(preset="vlm3r-7b", num_frames=32).num_frames == 32
    with pytest.raises(ValueError, match="num_frames=16 disagrees with preset 'tiny', which samples 32"):
        QAConfig(num_frames=16)
    with pytest.raises(ValueError, match="unknown preset 'small'"):
        QAConfig(preset="small")


def test_outputs_manifest_errors_and_resume(tmp_path, scene):
    import dataclasses

    root = str(tmp_path / "data")
    write_scene(scene, root)
    write_scene(dataclasses.replace(scene, scene_id="room-b", split="val"), root)
    broken = storage.join(root, "scenes", "synthetic", "room-c")
    storage.write_text(storage.join(broken, "scene.json"), '{"scene_id": "room-c"}')
    refs = find_scenes(root)
    assert [r.dir for r in refs] == [
        storage.join(root, "scenes", "synthetic", n) for n in ("room-a", "room-b", "room-c")
    ]
    out = str(tmp_path / "out")
    config = QAConfig(default_cap=3)
    results = [process_scene(r, out, config) for r in refs]
    assert [r.error is None for r in results] == [True, True, False]
    assert "room-c" in results[2].error and "missing" in results[2].error
    assert process_scene(refs[0], out, config).cached  # resume: not generated again
    assert storage.exists(scene_cache_uri(out, config, refs[1]))

    summary = write_outputs(out, config, refs, [results[2]])
    assert summary.num_failed == 1 and set(summary.counts) == {"train", "val"}
    train = storage.read_jsonl(f"{out}/qa/benchmark/train.jsonl")
    assert {r["split"] for r in train} == {"train"} and all(r["scene_name"] == "room-a" for r in train)
    assert storage.read_parquet(f"{out}/qa/benchmark/val.parquet").num_rows == sum(
        summary.counts["val"].values()
    )
    convs = storage.read_jsonl(f"{out}/qa/conversations/train.jsonl")
    assert [c["id"] for c in convs] == [r["id"] for r in train]
    manifest = storage.read_json(f"{out}/qa/manifest.json")
    assert manifest["counts"] == summary.counts and manifest["num_failed"] == 1
    assert (manifest["preset"], manifest["num_frames"]) == ("tiny", 32)
    assert json.loads(storage.read_text(f"{out}/qa/errors.jsonl"))["scene"] == broken


def test_a_scene_rewritten_in_place_is_generated_again(tmp_path, scene):
    import dataclasses

    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    config = QAConfig(default_cap=3)
    write_scene(scene, root)
    (before,) = find_scenes(root)
    process_scene(before, out, config)
    assert process_scene(find_scenes(root)[0], out, config).cached  # same file: cached

    write_scene(dataclasses.replace(scene, split="val"), root)  # rewritten: new content, same folder
    (after,) = find_scenes(root)
    assert after.dir == before.dir and after.version != before.version
    result = process_scene(after, out, config)
    assert not result.cached and result.num_rows > 0
    summary = write_outputs(out, config, [after], [])
    assert set(summary.counts) == {"val"}  # the new scene.json, not the cached rows of the old one
