"""What every QA task shares: the item it returns, checked templates, numeric distractors, angles.

A task turns a :class:`~datagen.scene_graph.SceneGraph` into :class:`QAItem` s. Multiple-choice
items carry their choices *unlettered* and the correct choice as ``answer``; letters are assigned
later, once, for the whole run (:func:`datagen.qa.assign_letters`), so that the correct letter is
balanced globally. Questions that list their choices in the text (relative distance, camera
movement direction) keep ``{choice_a}``... placeholders until the letters are known, so the order
in the question always matches the option letters.

Wording: every question type has :class:`Paraphrases`, its official template first (the benchmark's
text for the VSI-/VSTI-Bench types) and paraphrases with the same placeholders and the same
meaning after it. A task words each question with the template a :class:`TemplatePicker` chooses:
the official one (``OFFICIAL_TEMPLATES``, the default, which draws nothing) or one drawn from the
picker's own generator (``QAConfig(templates="diverse")``); the item records the template's id,
``"<question_type>/<k>"`` (``k = 0`` is the official template).
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from datagen.scene_graph import SceneGraph

CHOICE_FIELDS = ("choice_a", "choice_b", "choice_c", "choice_d")


class Template:
    """A question template whose placeholders are checked against the fields the code fills.

    Constructed at import time of each task module, so a template and its code can never drift
    apart silently (the reference formatted ``object_A_name`` into ``{obj_A_name}`` and lost every
    question of three tasks to a caught ``KeyError``).

    Args:
        text: ``str.format`` template with named placeholders only.
        fields: the names the code fills, exactly.
    """

    def __init__(self, text: str, fields: Sequence[str]):
        found = [name for _, name, spec, conv in string.Formatter().parse(text) if name is not None]
        if any(not name.isidentifier() for name in found):
            raise ValueError(f"template {text[:60]!r}...: only named placeholders are allowed, found {found}")
        if set(found) != set(fields):
            raise ValueError(
                f"template {text[:60]!r}...: placeholders {sorted(set(found))} != fields {sorted(fields)}"
            )
        self.text = text
        self.fields = tuple(fields)

    def format(self, **values: Any) -> str:
        """Fills every placeholder; the keys must be exactly the template's fields."""
        if set(values) != set(self.fields):
            raise ValueError(f"template needs {sorted(self.fields)}, got {sorted(values)}")
        return self.text.format(**values)

    def format_keeping_choices(self, **values: Any) -> str:
        """Fills every placeholder except ``{choice_a}``... (filled once letters are assigned)."""
        kept = {f: "{" + f + "}" for f in self.fields if f in CHOICE_FIELDS}
        if set(values) | set(kept) != set(self.fields) or set(values) & set(kept):
            raise ValueError(f"template needs {sorted(set(self.fields) - set(kept))}, got {sorted(values)}")
        escaped = {k: str(v).replace("{", "{{").replace("}", "}}") for k, v in values.items()}
        return self.text.format(**escaped, **kept)


class Paraphrases:
    """The templates of one question type: ``templates[0]`` is the official one, the rest paraphrase it.

    Every template has the same placeholders as the official one (checked here), so a task fills
    any of them with the same values.

    Args:
        question_type: the question type the templates word.
        official: the official template.
        paraphrases: other wordings with the same meaning.
    """

    def __init__(self, question_type: str, official: Template, *paraphrases: Template):
        for t in paraphrases:
            if set(t.fields) != set(official.fields):
                raise ValueError(
                    f"{question_type}: paraphrase {t.text[:60]!r}... has fields {sorted(t.fields)}, "
                    f"the official template {sorted(official.fields)}"
                )
        self.question_type = question_type
        self.templates = (official, *paraphrases)

    @property
    def official(self) -> Template:
        return self.templates[0]

    def template_id(self, k: int) -> str:
        """``"<question_type>/<k>"``, the id recorded with a question worded by ``templates[k]``."""
        return f"{self.question_type}/{k}"


class TemplatePicker:
    """Which template words each question: the official one, or a paraphrase drawn at random.

    Args:
        rng: None for the official template every time (draws nothing); else the generator the
            template numbers are drawn from, uniformly over the question type's templates. It is
            separate from the task's generator, so the choice of wording never changes which
            questions a task asks.
    """

    def __init__(self, rng: np.random.Generator | None = None):
        self.rng = rng

    def choose(self, paraphrases: Paraphrases) -> tuple[str, Template]:
        """The template id and the template for one question."""
        k = 0 if self.rng is None else int(self.rng.integers(len(paraphrases.templates)))
        return paraphrases.template_id(k), paraphrases.templates[k]


OFFICIAL_TEMPLATES = TemplatePicker()


def choice_list(n: int) -> str:
    """``"{choice_a}, {choice_b}, ..."``: the first ``n`` choice placeholders, comma-separated."""
    return ", ".join("{" + f + "}" for f in CHOICE_FIELDS[:n])


def paraphrases_by_choice_count(
    texts: Sequence[str],
    choice_counts: Mapping[str, int],
    fields: Sequence[str],
    listing: Callable[[int], str] = choice_list,
) -> dict[str, Paraphrases]:
    """Paraphrases of question types that differ only in how many choices the question lists.

    Args:
        texts: the wordings, official first; each has one ``{choices}`` slot and its other
            placeholders doubled (``{{category}}``).
        choice_counts: question type -> number of choices n.
        fields: the placeholders besides the choices.
        listing: n -> the text of the first n choice placeholders put in ``{choices}``.
    """
    return {
        qt: Paraphrases(
            qt, *(Template(text.format(choices=listing(n)), [*fields, *CHOICE_FIELDS[:n]]) for text in texts)
        )
        for qt, n in choice_counts.items()
    }


def fill_choices(question: str, ordered_choices: Sequence[str]) -> str:
    """Replaces the ``{choice_a}``... placeholders kept by :meth:`Template.format_keeping_choices`."""
    return question.format(**dict(zip(CHOICE_FIELDS, ordered_choices, strict=False)))


@dataclass(frozen=True)
class QAItem:
    """One generated question before letters are assigned.

    Attributes:
        question_type: the benchmark's ``question_type``.
        question: the question text (with ``{choice_a}``... placeholders when
            ``choices_in_question``).
        answer: for numeric questions the value as text (``"2.3"``, ``"45"``); for multiple choice
            the correct choice's text (one of ``choices``).
        choices: multiple-choice options without letters (empty for numeric questions).
        frame_indices: video frame numbers the question refers to (empty when none).
        choices_in_question: the question lists the choices and must be filled in option order.
        template: id of the template the question was worded with (:meth:`Paraphrases.template_id`).
    """

    question_type: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    frame_indices: tuple[int, ...] = ()
    choices_in_question: bool = False
    template: str = ""

    def __post_init__(self):
        if self.choices:
            if not 2 <= len(self.choices) <= 4:
                raise ValueError(f"{self.question_type}: needs 2 to 4 choices, got {self.choices}")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError(f"{self.question_type}: duplicate choices {self.choices}")
            if self.answer not in self.choices:
                raise ValueError(
                    f"{self.question_type}: answer {self.answer!r} is not a choice of {self.choices}"
                )
        else:
            try:
                value = float(self.answer)
            except ValueError as e:
                raise ValueError(
                    f"{self.question_type}: numeric answer {self.answer!r} is not a number"
                ) from e
            if not math.isfinite(value):
                raise ValueError(f"{self.question_type}: numeric answer {self.answer!r} is not finite")
        if self.choices_in_question:
            needed = set(CHOICE_FIELDS[: len(self.choices)])
            found = {name for _, name, _, _ in string.Formatter().parse(self.question) if name}
            if found != needed:
                raise ValueError(
                    f"{self.question_type}: question placeholders {sorted(found)} != {sorted(needed)}"
                )


def format_number(value: float, decimals: int) -> str:
    """A numeric ground truth as text: ``"45"`` for 0 decimals, ``"2.3"`` for 1."""
    rounded = round(float(value), decimals)
    return str(int(rounded)) if decimals == 0 else f"{rounded:.{decimals}f}"


def numeric_distractors(
    gt: float,
    rng: np.random.Generator,
    lower: float,
    upper: float,
    decimals: int,
    margin: float = 0.2,
    rounds: int = 31,
) -> list[float] | None:
    """Three wrong values for a numeric answer, or None when none can be found (the item is dropped).

    The reference rule (``generate_multiple_choice``): values ~ U[lower * gt, upper * gt], rounded to
    ``decimals``; any value closer than ``eps = ceil(gt * margin * 10^d) / 10^d`` to the ground truth
    or to another value is redrawn, for at most ``rounds`` rounds. Numeric questions are trained and
    scored as free-form numbers, so these values only act as a filter (tiny ground truths fail).
    """
    scale = 10**decimals
    eps = math.ceil(gt * margin * scale) / scale
    values = np.round(rng.uniform(lower * gt, upper * gt, 3), decimals)
    for _ in range(rounds):
        bad = [
            i
            for i in range(3)
            if abs(values[i] - gt) < eps or any(abs(values[i] - values[j]) < eps for j in range(3) if j != i)
        ]
        if not bad:
            return values.tolist()
        values[bad] = np.round(rng.uniform(lower * gt, upper * gt, len(bad)), decimals)
    return None


def shuffled_combinations(
    items: Sequence[Any], k: int, rng: np.random.Generator, limit: int = 20000
) -> list[tuple]:
    """Distinct k-combinations of ``items`` in random order.

    All of them when there are at most ``limit``; otherwise ``limit`` random distinct ones (so a
    scene with many categories does not enumerate millions of tuples).
    """
    n = len(items)
    if k > n:
        return []
    if math.comb(n, k) <= limit:
        combos = list(combinations(items, k))
        order = rng.permutation(len(combos))
        return [combos[i] for i in order]
    seen: set[tuple[int, ...]] = set()
    out = []
    for _ in range(4 * limit):
        if len(out) == limit:
            break
        pick = tuple(sorted(rng.choice(n, size=k, replace=False).tolist()))
        if pick not in seen:
            seen.add(pick)
            out.append(tuple(items[i] for i in pick))
    return out


def spread_triples(
    graph: SceneGraph, rng: np.random.Generator, min_m: float, max_m: float
) -> Iterator[tuple[str, str, str]]:
    """Triples of scene-unique categories, in random order (:func:`shuffled_combinations`), whose
    pairwise closest-point distances all lie in ``[min_m, max_m]`` metres; lazily."""
    for a, b, c in shuffled_combinations(graph.unique_categories(), 3, rng):
        if all(min_m <= graph.category_distance(x, y) <= max_m for x, y in ((a, b), (a, c), (b, c))):
            yield a, b, c


def ccw_angle_deg(forward_xy: np.ndarray, target_xy: np.ndarray) -> np.ndarray:
    """Angle in [0, 360) from ``forward`` to ``target``, counter-clockwise seen from +Z.

    In a right-handed Z-up world, (0, 180) is the left-hand side of someone facing ``forward``.

    Args:
        forward_xy: (2,) facing direction.
        target_xy: (M, 2) or (2,) directions to the targets.
    """
    target_xy = np.asarray(target_xy, dtype=np.float64)
    cross = forward_xy[0] * target_xy[..., 1] - forward_xy[1] * target_xy[..., 0]
    dot = forward_xy[0] * target_xy[..., 0] + forward_xy[1] * target_xy[..., 1]
    return np.degrees(np.arctan2(cross, dot)) % 360.0
