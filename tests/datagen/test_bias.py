"""datagen.bias: blind baselines (answer frequency, per object category, naive Bayes over the question) on
held-out rows, and the debiasing rounds, on rows with planted biases and on generated rows."""

from __future__ import annotations

import numpy as np
import pytest

from datagen.bias import (
    BlindCounts,
    BlindRow,
    _pattern,
    fit_counts,
    is_held_out,
    measure_bias,
    question_category,
)
from datagen.qa import GENERATOR_VERSION, QAConfig, assign_letters, generate_scene_rows
from datagen.tasks import TASKS
from tests.datagen.scene_builder import random_scene

CATEGORIES = ("bed", "chair", "sofa", "table", "lamp", "desk", "sink", "stool")
QUADRANTS = ("front-left", "front-right", "back-left", "back-right")


def _row(scene: str, split: str, n: int, question_type: str, fields: dict, choices, answer: str, k: int = 0) -> dict:
    """A pre-letter row worded by template ``k`` of its type, as :func:`datagen.qa.generate_scene_rows` makes it."""
    paraphrases = next(t.paraphrases[question_type] for t in TASKS.values() if question_type in t.paraphrases)
    return {
        "id": f"synthetic/{scene}/{question_type}/{n:04d}",
        "dataset": "synthetic",
        "scene_name": scene,
        "question_type": question_type,
        "question": paraphrases.templates[k].format(**fields),
        "choices": list(choices),
        "answer": answer,
        "choices_in_question": False,
        "frame_indices": [],
        "video": "v.mp4",
        "split": split,
        "seed": 0,
        "generator_version": GENERATOR_VERSION,
        "timestamps": [0.0, 1.0],
        "duration_s": 2.0,
        "template": f"{question_type}/{k}",
    }


def _planted_scene(rng: np.random.Generator, scene: str, split: str, per_type: int) -> list[dict]:
    """Rows of four question types, each with one kind of bias (or none):

    - ``object_rel_direction_easy``: none (left/right at random);
    - ``object_rel_direction_medium``: answer frequency ("back" is right 3 times in 4);
    - ``object_rel_direction_hard``: object category (the standing object's category fixes the quadrant in
      7 rows of 10, the others are at random);
    - ``object_size_estimation``: numeric, the size follows the category (10x apart) within +-10 %.
    """
    rows = []
    for n in range(per_type):
        a, b, c = rng.choice(CATEGORIES, 3, replace=False)
        fields = {"positioning_object": a, "orienting_object": b, "querying_object": c}
        k = int(rng.integers(3))  # any of the type's templates
        rows.append(_row(scene, split, n, "object_rel_direction_easy", fields, ("left", "right"), str(rng.choice(["left", "right"])), k))
        medium = "back" if rng.random() < 0.75 else str(rng.choice(["left", "right"]))
        rows.append(_row(scene, split, n, "object_rel_direction_medium", fields, ("left", "right", "back"), medium, k))
        quadrant = QUADRANTS[CATEGORIES.index(a) % 4] if rng.random() < 0.7 else str(rng.choice(QUADRANTS))
        rows.append(_row(scene, split, n, "object_rel_direction_hard", fields, QUADRANTS, quadrant, k))
        size = 10.0 * 10 ** (CATEGORIES.index(c) % 3) * rng.uniform(0.9, 1.1)
        rows.append(_row(scene, split, n, "object_size_estimation", {"category": c}, (), f"{size:.0f}", k))
    return sorted(rows, key=lambda r: r["id"])


@pytest.fixture(scope="module")
def planted() -> list[list[dict]]:
    """Groups of scenes (the unit a map call reads): 60 scenes, a third of them val, 25 rows per type."""
    rng = np.random.default_rng(0)
    scenes = [_planted_scene(rng, f"s{i:03d}", "val" if i % 3 == 0 else "train", 25) for i in range(60)]
    return [sum(scenes[i : i + 8], []) for i in range(0, len(scenes), 8)]


def _read(group: list[dict]) -> list[dict]:
    return group


def test_the_category_is_the_first_object_of_the_official_template_in_every_wording():
    scene = random_scene(np.random.default_rng(5), 24, 96, scene_id="x")
    names = {o.category for o in scene.objects}
    for templates in ("official", "diverse"):
        rows = generate_scene_rows(scene, "v.mp4", QAConfig(tasks=("all",), route_planner="builtin", templates=templates))
        for row in rows + assign_letters(rows, 0):  # before and after the choices are filled in
            names_object = _pattern(row["template"])[1] is not None
            category = question_category(row["question"], row["template"])
            assert (category in names) if names_object else category == "", (row["question"], category)
    official = "If I am standing by the bed and facing the sofa, is the lamp to the left or the right of the sofa?"
    assert question_category(official, "object_rel_direction_easy/0") == "bed"
    assert question_category("Anything at all?", "object_rel_direction_easy/0") == ""  # not this template
    assert question_category("How many beds?", "no_such_type/0") == ""
    assert question_category("What is the size of this room?", "room_size_estimation/0") == ""


def test_blind_baselines_find_each_planted_bias_and_nothing_else(planted):
    result = measure_bias(planted, _read, seed=0)
    types = result.report["question_types"]
    easy, medium, hard, size = (types[t] for t in ("object_rel_direction_easy", "object_rel_direction_medium",
                                                    "object_rel_direction_hard", "object_size_estimation"))  # fmt: skip
    assert easy["metric"] == "accuracy" and size["metric"] == "MRA"
    assert easy["rows_held_out"] > 500 and easy["rows_fit"] > 800
    assert easy["rows_held_out"] + easy["rows_fit"] == 60 * 25
    # no bias: every baseline at chance
    assert easy["chance"] == 0.5 and all(abs(easy[b] - 0.5) < 0.05 for b in ("frequency", "category", "text"))
    # answer frequency: "back" is right 3 times in 4
    assert medium["chance"] == pytest.approx(1 / 3) and medium["frequency"] == pytest.approx(0.75, abs=0.05)
    # category: the standing object mostly fixes the quadrant (0.7 + 0.3 / 4), and the question's words name it
    assert hard["frequency"] < 0.35 and hard["category"] == pytest.approx(0.775, abs=0.05) and hard["text"] > 0.6
    # numeric: the median misses most sizes, the category's median hits them
    assert size["chance"] == size["frequency"] < 0.4 and size["category"] > 0.8
    assert result.before is None and not result.rounds.rounds


def test_counts_do_not_depend_on_how_scenes_are_split_or_ordered(planted):
    rows = [r for group in planted for r in group]
    whole = fit_counts(rows, 0, measure_bias([], _read, 0).rounds)
    parts = BlindCounts()
    for group in reversed(planted):
        parts.merge(fit_counts(group, 0, measure_bias([], _read, 0).rounds))
    assert parts.types.keys() == whole.types.keys()
    for name, counts in whole.types.items():
        assert vars(parts.types[name]) == vars(counts)
    forward = measure_bias(planted, _read, 0, debias=True)
    backward = measure_bias(planted, _read, 0, lambda fn, items: reversed([fn(i) for i in items]), debias=True)
    assert forward.report == backward.report and forward.before == backward.before


def test_held_out_rows_are_other_splits_and_one_train_scene_in_five():
    rows = [{"split": "train", "dataset": "synthetic", "scene_name": f"s{i}"} for i in range(2000)]
    share = np.mean([is_held_out(r, 0) for r in rows])
    assert 0.17 < share < 0.23
    assert is_held_out({"split": "val", "dataset": "d", "scene_name": "x"}, 0)
    assert [is_held_out(r, 0) for r in rows] != [is_held_out(r, 1) for r in rows]  # the fold follows the seed


def test_debiasing_prunes_the_biased_types_until_the_baselines_sit_near_chance(planted):
    result = measure_bias(planted, _read, seed=0, debias=True, tolerance=0.05)
    before, after = result.before["question_types"], result.report["question_types"]
    for name, figures in after.items():
        checked = ("category", "text") if figures["metric"] == "MRA" else ("frequency", "category", "text")
        assert all(figures[b] <= figures["chance"] + 0.05 + figures["noise"] for b in checked), (name, figures)
    assert result.rounds.rounds and "object_rel_direction_easy" not in result.rounds.rounds[0][1]
    assert after["object_rel_direction_easy"] == {**before["object_rel_direction_easy"]}  # untouched
    for name in ("object_rel_direction_medium", "object_rel_direction_hard", "object_size_estimation"):
        assert after[name]["rows_held_out"] < before[name]["rows_held_out"]
        assert after[name]["rows_held_out"] > 0.05 * before[name]["rows_held_out"]  # pruned, not emptied
    # The rule is a function of the row: the surviving held-out rows are the ones it keeps.
    kept = sum(result.rounds.keeps(BlindRow.of(r)) for g in planted for r in g if is_held_out(r, 0))
    assert kept == result.report["rows_held_out"]
