"""object_abs_distance and object_rel_distance against the distances worked out on paper (conftest)."""

from __future__ import annotations

import re
from itertools import combinations

import numpy as np
from conftest import paper_distance

from datagen.tasks import object_abs_distance, object_rel_distance

UNIQUE = ["bed", "lamp", "sofa", "table", "tv"]


def test_abs_distance_answers_match_paper_and_drop_touching_pairs(room_graph):
    items = object_abs_distance.generate(room_graph, np.random.default_rng(0), cap=100)
    got = {}
    for item in items:
        a, b = re.match(r".*between the (\w+) and the (\w+) \(in meters\)\?$", item.question).groups()
        got[frozenset((a, b))] = item.answer
    expected = {
        frozenset(p): f"{round(paper_distance(*p), 1):.1f}"
        for p in combinations(UNIQUE, 2)
        if round(paper_distance(*p), 1) >= 0.2
    }
    assert got == expected  # table-lamp (touching, 0 m) is the one pair left out; chair is not unique
    assert got[frozenset(("bed", "table"))] == "0.8"
    assert len(object_abs_distance.generate(room_graph, np.random.default_rng(0), cap=3)) == 3


def _expected_rel_distance(n_choices: int, tau: float) -> dict:
    """Every (primary, choices) the rule keeps, with its answer, from the paper distances."""
    categories = ["bed", "chair", "lamp", "sofa", "table", "tv"]
    out = {}
    for primary in UNIQUE:
        for choices in combinations([c for c in categories if c != primary], n_choices):
            d = {c: paper_distance(primary, c) for c in choices}
            if min(d.values()) < 0.15 or any(abs(d[x] - d[y]) <= tau for x, y in combinations(choices, 2)):
                continue
            out[(primary, frozenset(choices))] = min(d, key=d.get)
    return out


def test_rel_distance_keeps_exactly_the_unambiguous_questions(room_graph):
    items = object_rel_distance.generate(room_graph, np.random.default_rng(0), cap=1000)
    for question_type, n in object_rel_distance.VARIANTS.items():
        got = {}
        for item in (i for i in items if i.question_type == question_type):
            primary = re.search(r"is the closest to the (\w+)\?", item.question).group(1)
            assert item.choices_in_question and len(item.choices) == n
            got[(primary, frozenset(item.choices))] = item.answer
        assert got == _expected_rel_distance(n, tau=0.15), question_type
    # e.g. for the tv: chair 1.32 m, lamp 1.5, bed 2.63, sofa 2.9 -> chair; table (1.2) is within 0.15 of chair.
    assert _expected_rel_distance(4, 0.15)[("tv", frozenset({"bed", "chair", "lamp", "sofa"}))] == "chair"
    assert ("tv", frozenset({"bed", "chair", "lamp", "table"})) not in _expected_rel_distance(4, 0.15)


def test_rel_distance_margin_grows_in_large_rooms():
    assert object_rel_distance.ambiguity_margin(30.0) == 0.15
    assert object_rel_distance.ambiguity_margin(40.5) == 0.30
