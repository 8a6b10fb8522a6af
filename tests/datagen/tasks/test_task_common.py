"""Shared task machinery: checked templates and paraphrases, item validation, numeric distractors, the
registry, task sets and the benchmark each question type is scored under."""

from __future__ import annotations

import string

import numpy as np
import pytest

from datagen.tasks import TASK_SETS, TASKS, expand_task_names
from datagen.tasks.common import (
    OFFICIAL_TEMPLATES,
    Paraphrases,
    QAItem,
    Template,
    TemplatePicker,
    fill_choices,
    format_number,
    numeric_distractors,
)
from vlm3r_core.metrics import benchmark_of


def test_template_placeholders_must_match_the_code():
    with pytest.raises(ValueError, match="placeholders"):
        Template("relative to {obj_B_name}, is {obj_A_name} to the left?", ["object_A_name", "object_B_name"])
    with pytest.raises(ValueError, match="named placeholders"):
        Template("frame {} of {}", [])
    t = Template("Is the {a} near the {b}?", ["a", "b"])
    with pytest.raises(ValueError, match="needs"):
        t.format(a="bed")
    assert t.format(a="bed", b="tv") == "Is the bed near the tv?"


def test_choices_are_filled_after_letters_in_option_order():
    t = Template(
        "Which of ({choice_a}, {choice_b}) is closest to the {category}?",
        ["category", "choice_a", "choice_b"],
    )
    kept = t.format_keeping_choices(category="odd {name}")
    assert kept == "Which of ({choice_a}, {choice_b}) is closest to the odd {{name}}?"
    assert fill_choices(kept, ["tv", "bed"]) == "Which of (tv, bed) is closest to the odd {name}?"


def test_every_question_type_has_an_official_template_and_at_least_two_checked_paraphrases():
    # Importing the registry built every template; each is a Template whose fields equal its placeholders.
    for name, task in TASKS.items():
        assert task.question_types, name
        for question_type, paraphrases in task.paraphrases.items():
            assert paraphrases.question_type == question_type
            texts = [t.text for t in paraphrases.templates]
            assert len(texts) >= 3 and len(set(texts)) == len(texts), question_type
            for t in paraphrases.templates:
                found = {f for _, f, _, _ in string.Formatter().parse(t.text) if f}
                assert found == set(t.fields) == set(paraphrases.official.fields), question_type
            # A route question's note names the fill-in marker once, whatever the wording.
            if question_type.startswith("route_planning"):
                assert all(t.count("[please fill in]") == 1 for t in texts)


def test_paraphrases_must_fill_the_same_placeholders():
    official = Template("How many {category}(s)?", ["category"])
    with pytest.raises(ValueError, match="fields"):
        Paraphrases("object_counting", official, Template("How many {name}(s)?", ["name"]))
    p = Paraphrases("object_counting", official, Template("Count the {category}(s).", ["category"]))
    assert p.template_id(1) == "object_counting/1" and p.official is official


def test_template_picker_official_draws_nothing_and_diverse_draws_every_wording():
    p = Paraphrases(
        "q",
        Template("A {x}?", ["x"]),
        Template("B {x}?", ["x"]),
        Template("C {x}?", ["x"]),
    )
    assert {OFFICIAL_TEMPLATES.choose(p)[0] for _ in range(20)} == {"q/0"}
    rng = np.random.default_rng(3)
    picks = [TemplatePicker(rng).choose(p) for _ in range(300)]
    assert {tid for tid, _ in picks} == {"q/0", "q/1", "q/2"}
    assert all(t is p.templates[int(tid.split("/")[1])] for tid, t in picks)
    again = [TemplatePicker(np.random.default_rng(3)).choose(p)[0]]
    assert again[0] == picks[0][0]  # seeded


def test_task_sets_split_the_registry_and_benchmarks_agree_with_the_scorer():
    assert (
        len(TASK_SETS["official"]) == 13 and TASK_SETS["all"] == TASK_SETS["official"] + TASK_SETS["extended"]
    )
    assert set(TASK_SETS["all"]) == set(TASKS) and not set(TASK_SETS["official"]) & set(TASK_SETS["extended"])
    assert len(TASK_SETS["extended"]) >= 5
    for name, task in TASKS.items():
        in_official = name in TASK_SETS["official"]
        assert task.benchmark in (("vsibench", "vstibench") if in_official else ("vlm3r-ext",)), name
        for question_type in task.question_types:
            assert benchmark_of(question_type) == task.benchmark, question_type
    types = [qt for t in TASKS.values() for qt in t.question_types]
    assert len(types) == len(set(types))  # row ids are numbered per question type: no two tasks share one
    assert expand_task_names(["object_counting", "official", "perspective_taking"]) == (
        *TASK_SETS["official"],
        "perspective_taking",
    )
    with pytest.raises(ValueError, match="unknown task"):
        expand_task_names(["offical"])


def test_items_are_validated():
    with pytest.raises(ValueError, match="not a choice"):
        QAItem("x", "q", answer="sofa", choices=("bed", "tv"))
    with pytest.raises(ValueError, match="duplicate"):
        QAItem("x", "q", answer="bed", choices=("bed", "bed"))
    with pytest.raises(ValueError, match="not a number"):
        QAItem("x", "q", answer="two")
    with pytest.raises(ValueError, match="not finite"):
        QAItem("x", "q", answer="nan")
    with pytest.raises(ValueError, match="placeholders"):
        QAItem("x", "Which of ({choice_a})?", answer="bed", choices=("bed", "tv"), choices_in_question=True)


def test_numbers_and_distractors():
    assert (
        format_number(199.6, 0) == "200" and format_number(2.25, 1) == "2.2" and format_number(3, 1) == "3.0"
    )
    rng = np.random.default_rng(0)
    values = numeric_distractors(3.0, rng, lower=0.25, upper=1.75, decimals=1)
    eps = 0.6  # ceil(3.0 * 0.2 * 10) / 10
    assert len(values) == 3 and all(0.75 <= v <= 5.25 for v in values)
    assert all(abs(v - 3.0) >= eps for v in values)
    assert all(abs(a - b) >= eps for i, a in enumerate(values) for b in values[i + 1 :])
    # 0.2 m: the only values on the 0.1 grid in [0.05, 0.35] are 0.1, 0.2, 0.3: no three fit.
    assert numeric_distractors(0.2, rng, lower=0.25, upper=1.75, decimals=1) is None
