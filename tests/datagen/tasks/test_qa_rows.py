"""datagen.qa: per-scene rows and seeding, task sets, template wording (official rows as before), global
letter balancing, conversations, output files."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from datagen.dataset import write_outputs
from datagen.qa import (
    GENERATOR_VERSION,
    QAConfig,
    assign_letters,
    conversation,
    generate_scene_rows,
    process_scene,
    scene_cache_uri,
)
from datagen.tasks import TASK_SETS, TASKS
from tests.datagen.scene_builder import random_scene, write_scene_with_video
from vlm3r_core import storage
from vlm3r_core.metrics import benchmark_of
from vlm3r_core.prompting import PromptConfig
from vlm3r_core.scene import list_scenes


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
        "template": f"{question_type}/0",
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
    write_scene_with_video(scene, root)
    write_scene_with_video(dataclasses.replace(scene, scene_id="room-b", split="val"), root)
    broken = storage.join(root, "scenes", "synthetic", "room-c")
    storage.write_text(storage.join(broken, "scene.json"), '{"scene_id": "room-c"}')
    refs = list_scenes(root)
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
    train = storage.read_parquet(f"{out}/qa/benchmark/train").to_pylist()
    assert {r["split"] for r in train} == {"train"} and all(r["scene_name"] == "room-a" for r in train)
    assert storage.read_parquet(f"{out}/qa/benchmark/val").num_rows == sum(summary.counts["val"].values())
    convs = storage.read_parquet(f"{out}/qa/conversations/train").to_pylist()
    assert [c["id"] for c in convs] == [r["id"] for r in train]
    manifest = storage.read_json(f"{out}/qa/manifest.json")
    assert manifest["counts"] == summary.counts and manifest["num_failed"] == 1
    assert (manifest["preset"], manifest["num_frames"]) == ("tiny", 32)
    assert results[2].scene_dir == broken  # the job records it in qa/errors.jsonl (tests/jobs)


def test_a_scene_rewritten_in_place_is_generated_again(tmp_path, scene):
    import dataclasses

    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    config = QAConfig(default_cap=3)
    write_scene_with_video(scene, root)
    (before,) = list_scenes(root)
    process_scene(before, out, config)
    assert process_scene(list_scenes(root)[0], out, config).cached  # same file: cached

    write_scene_with_video(dataclasses.replace(scene, split="val"), root)  # rewritten: new content, same folder
    (after,) = list_scenes(root)
    assert after.dir == before.dir and after.version != before.version
    result = process_scene(after, out, config)
    assert not result.cached and result.num_rows > 0
    summary = write_outputs(out, config, [after], [])
    assert set(summary.counts) == {"val"}  # the new scene.json, not the cached rows of the old one


# blake2b-128 of the rows of two scenes, computed with the generator as it was before task sets and
# template paraphrases existed (commit a074dd3), for the default config and for seed 7 with 50 questions
# per type: pre-letter rows, benchmark rows, conversations (the new ``template`` column left out, and
# ``generator_version`` read as it was then: vlm3r-qa-2 changed the letters of runs of more than one
# shard group only).
ROWS_BEFORE = {
    "default": (
        588,
        "6f134aff622c8fed21b25e3b202efdf9",
        "83cb67fbe9435d64f0bb7f03519bea46",
        "36a00695fbf46fa2e3d3f3bcb21b191b",
    ),
    "seed7-cap50": (
        1406,
        "022e7e2ae772985a8a4db3341f1340b4",
        "460550d336223d4c2997700bf79d52e7",
        "5b5364f1b45655849b446bca167a3306",
    ),
}


def _digest(rows: list[dict]) -> str:
    rows = [{k: v for k, v in r.items() if k != "template"} for r in rows]
    for r in rows:
        if "generator_version" in r:
            assert r["generator_version"].startswith(GENERATOR_VERSION)
            r["generator_version"] = r["generator_version"].replace(GENERATOR_VERSION, "vlm3r-qa-1")
    return hashlib.blake2b(json.dumps(rows, sort_keys=True).encode(), digest_size=16).hexdigest()


@pytest.fixture(scope="module")
def two_scenes():
    return [
        random_scene(np.random.default_rng(3), num_objects=16, num_frames=64, scene_id="room-a"),
        random_scene(np.random.default_rng(5), num_objects=24, num_frames=96, scene_id="room-b", split="val"),
    ]


@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("default", QAConfig(route_planner="builtin")),
        ("seed7-cap50", QAConfig(seed=7, default_cap=50, route_planner="builtin", templates="official")),
    ],
)
def test_official_templates_and_the_default_task_set_give_the_rows_of_before(two_scenes, name, config):
    assert config.tasks == TASK_SETS["official"] and config.templates == "official"
    rows = [r for s in two_scenes for r in generate_scene_rows(s, "v.mp4", config)]
    timing = {r["id"]: (r["timestamps"], r["duration_s"]) for r in rows}
    bench = assign_letters(rows, seed=config.seed)
    convs = [conversation(r, *timing[r["id"]], config.prompt) for r in bench]
    # Conversations gained the benchmark row's question, options and answer since (training renders its prompt).
    assert all(c["question"] == b["question"] and c["options"] == b["options"] for c, b in zip(convs, bench, strict=True))
    convs = [{k: v for k, v in c.items() if k not in ("question", "options", "answer")} for c in convs]
    assert (len(rows), _digest(rows), _digest(bench), _digest(convs)) == ROWS_BEFORE[name]
    assert all(r["template"] == f"{r['question_type']}/0" for r in bench)


def test_diverse_templates_are_seeded_recorded_and_change_only_the_wording(two_scenes):
    scene = two_scenes[0]
    official = generate_scene_rows(scene, "v.mp4", QAConfig(tasks=("all",), route_planner="builtin"))
    diverse = generate_scene_rows(
        scene, "v.mp4", QAConfig(tasks=("all",), route_planner="builtin", templates="diverse")
    )
    assert diverse == generate_scene_rows(
        scene, "v.mp4", QAConfig(tasks=("all",), route_planner="builtin", templates="diverse")
    )
    assert len(diverse) == len(official)
    wording = {"question", "template"}
    for a, b in zip(official, diverse, strict=True):
        assert {k: v for k, v in a.items() if k not in wording} == {
            k: v for k, v in b.items() if k not in wording
        }
        question_type, k = b["template"].rsplit("/", 1)
        assert question_type == b["question_type"]
        templates = next(t for t in TASKS.values() if question_type in t.paraphrases).paraphrases[
            question_type
        ]
        assert 0 <= int(k) < len(templates.templates)
        assert (b["question"] == a["question"]) == (k == "0")  # the recorded template is the one used
    used = Counter(r["template"].rsplit("/", 1)[1] for r in diverse)
    assert set(used) == {"0", "1", "2"} and min(used.values()) > len(diverse) / 6
    other_seed = generate_scene_rows(
        scene, "v.mp4", QAConfig(tasks=("all",), route_planner="builtin", templates="diverse", seed=1)
    )
    assert [r["template"] for r in other_seed] != [r["template"] for r in diverse]


def test_diverse_rows_keep_their_choices_in_option_order(two_scenes):
    rows = generate_scene_rows(
        two_scenes[1], "v.mp4", QAConfig(tasks=("all",), route_planner="builtin", templates="diverse")
    )
    for row in assign_letters(rows, seed=0):
        if row["question_type"].startswith(("object_rel_distance", "object_depth_order", "object_height")):
            names = [o.split(". ", 1)[1] for o in row["options"]]
            assert f"({', '.join(names)})" in row["question"]
        assert "{" not in row["question"]


def test_task_sets_in_the_config_and_the_benchmark_of_extended_rows(two_scenes):
    assert QAConfig().tasks == TASK_SETS["official"]
    assert QAConfig(tasks=("extended", "object_counting")).tasks == (
        *TASK_SETS["extended"],
        "object_counting",
    )
    assert (
        QAConfig(tasks=("all",)).tasks == TASK_SETS["all"] == QAConfig(tasks=("official", "extended")).tasks
    )
    rows = generate_scene_rows(two_scenes[0], "v.mp4", QAConfig(tasks=("extended",), route_planner="builtin"))
    assert {benchmark_of(r["question_type"]) for r in rows} == {"vlm3r-ext"}
    assert {r["question_type"] for r in rows} == {
        qt for t in TASK_SETS["extended"] for qt in TASKS[t].question_types
    }
    one_turn = {r["generator_version"] for r in rows if r["question_type"] == "route_planning_one_turn"}
    assert one_turn == {"vlm3r-qa-2+builtin"}
    with pytest.raises(ValueError, match="unknown task"):
        QAConfig(tasks=("extendd",))
    with pytest.raises(ValueError, match="sequence of names"):
        QAConfig(tasks="all")
    with pytest.raises(ValueError, match="caps for unknown"):
        QAConfig(caps={"extended": 3})
    with pytest.raises(ValueError, match="templates must be one of"):
        QAConfig(templates="fancy")


def test_the_template_choice_is_in_the_fingerprint_the_outputs_and_the_manifest(tmp_path, two_scenes):
    assert QAConfig().fingerprint() != QAConfig(templates="diverse").fingerprint()
    assert QAConfig(tasks=("official",)).fingerprint() == QAConfig().fingerprint()
    root, out = str(tmp_path / "data"), str(tmp_path / "out")
    write_scene_with_video(two_scenes[0], root)
    config = QAConfig(default_cap=2, templates="diverse", route_planner="builtin")
    refs = list_scenes(root)
    assert process_scene(refs[0], out, config).error is None
    write_outputs(out, config, refs, [])
    table = storage.read_parquet(f"{out}/qa/benchmark/train")
    assert table.column_names[-1] == "template"
    rows = generate_scene_rows(two_scenes[0], "v.mp4", config)
    assert table.column("template").to_pylist() == [r["template"] for r in rows]
    assert storage.read_json(f"{out}/qa/manifest.json")["templates"] == "diverse"
    assert "| templates | `diverse` |" in storage.read_text(f"{out}/qa/README.md")


def test_adding_the_extended_families_leaves_the_official_rows_as_they_are(two_scenes):
    official_types = {qt for t in TASK_SETS["official"] for qt in TASKS[t].question_types}
    official = [
        r for s in two_scenes for r in generate_scene_rows(s, "v.mp4", QAConfig(route_planner="builtin"))
    ]
    everything = [
        r
        for s in two_scenes
        for r in generate_scene_rows(s, "v.mp4", QAConfig(tasks=("all",), route_planner="builtin"))
    ]
    assert len(everything) > len(official)
    assert [r for r in everything if r["question_type"] in official_types] == official
    lettered = [r for r in assign_letters(everything, seed=0) if r["question_type"] in official_types]
    assert lettered == assign_letters(official, seed=0)
