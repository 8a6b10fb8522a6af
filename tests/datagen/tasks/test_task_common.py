"""Shared task machinery: checked templates, item validation, numeric distractors, the registry."""

from __future__ import annotations

import string

import numpy as np
import pytest

from datagen.tasks import TASKS
from datagen.tasks.common import QAItem, Template, fill_choices, format_number, numeric_distractors


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


def test_every_registered_task_module_has_checked_templates():
    # Importing the registry built every template; each is a Template whose fields equal its placeholders.
    import importlib

    for name in TASKS:
        module = importlib.import_module(f"datagen.tasks.{name}")
        templates = [getattr(module, "TEMPLATE", None), *getattr(module, "TEMPLATES", {}).values()]
        templates = [t for t in templates if t is not None]
        assert templates, name
        for t in templates:
            found = {f for _, f, _, _ in string.Formatter().parse(t.text) if f}
            assert found == set(t.fields), name


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
