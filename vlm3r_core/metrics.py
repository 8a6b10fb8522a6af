"""VSI-Bench / VSTI-Bench scoring: the official rules exactly, plus a lenient parser reported apart.

Official rules (thinking-in-space ``lmms_eval/tasks/vsibench/utils.py`` and the VSTI-Bench task):

- Parsing: the output is stripped of surrounding whitespace (lmms-eval's ``Task.process_results``
  does it before the task sees the answer), then the first space-separated token is taken and a
  trailing ``.`` removed (``" A"`` -> ``"A"``, ``"C.\n"`` -> ``"C"``, ``"A. left"`` -> ``"A"``,
  ``"3.5 meters"`` -> ``"3.5"``, ``"about 3.5"`` -> ``"about"``).
- Multiple choice (MCA): case-insensitive exact match with the answer letter (``mc_answer`` when
  the row has one, as in VSTI-Bench, else ``ground_truth``).
- Numeric (NA): ``float()`` of the token; a parse failure scores 0. Mean relative accuracy over
  the thresholds 0.50, 0.55, ..., 0.95: ``mean_θ [ |pred - gt| / gt <= 1 - θ ]``.
- VSI-Bench aggregation: mean per ``question_type``; ``object_rel_direction_{easy,medium,hard}``
  are averaged into one task first; overall = mean of the task scores, x 100.
- VSTI-Bench aggregation: mean per ``question_type`` and overall = mean over every type present
  (sub-types such as ``_v1/_v2/_v3`` are not merged), x 100.

The question types of this project's extended task families (``datagen.tasks`` set
``"extended"``: depth order, object-to-camera direction, perspective taking, size comparison,
multi-view correspondence, one-turn routes) are scored by the same rules (all multiple choice) and
aggregated as VSTI-Bench is, under their own benchmark ``"vlm3r-ext"``, so the VSI-Bench and
VSTI-Bench figures never include them.

Edge cases, and what this module does where the official code does not say:

- Ground truth 0 on a numeric question: the relative error divides by zero. The official task
  raises ``ZeroDivisionError`` there (only ``TypeError`` is caught) and the whole lmms-eval run
  stops; here the question scores 0 whatever the prediction. No released VSI-Bench or VSTI-Bench
  row has a ground truth of 0 (our generators never write one either).
- A multiple-choice row without ``mc_answer``: the letter is compared with ``ground_truth``, as
  VSI-Bench does (its ``ground_truth`` is the letter). VSTI-Bench compares with ``mc_answer``
  always (its rows all have one). A row whose ``ground_truth`` is the option text and that has no
  ``mc_answer`` can only score 0 under the official rules; the lenient parser still matches the
  option text.
- A prediction that is not text (``None``: the model failed on the question) scores 0.

Chance levels (:func:`chance_levels`): VSI-Bench prints two rows of them beside every model.
``chance`` is a random guess: 1 / (number of options) for multiple choice, undefined for numeric
questions (so its overall is undefined when the benchmark has any). ``frequency`` always gives
the most frequent answer of the question type: for numeric questions the most frequent ground
truth value (the smallest on a tie); for multiple choice the option holding the most frequent
answer text (``left`` for relative direction) where a question offers it, else the most frequent
answer letter (a text that was the answer only once does not count as frequent; ties go to the
first in alphabetical order). Both are scored with the official rules and aggregated like a
model's scores.

The lenient parser also reads ``"B) chair"``, ``"(B)"``, ``"The answer is B"``, the full option
text, and numbers with units (``"150 cm"`` for a question asked in metres). It is always reported
in its own column and never changes the official score.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

MRA_THRESHOLDS = np.linspace(0.5, 0.95, 10)

# question_type -> unit the ground truth is expressed in
NUMERIC_QUESTION_UNITS = {
    "object_counting": None,
    "object_size_estimation": "cm",
    "room_size_estimation": "m2",
    "object_abs_distance": "m",
    "camera_obj_abs_dist": "m",
    "camera_displacement": "m",
    "camera_obj_dist_change": "m",
}
REL_DIRECTION_LEVELS = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard")
# Multiple-choice question types of both benchmarks, by prefix so that the variants
# (object_rel_direction_easy, camera_movement_direction_v2, obj_obj_relative_pos_lr, ...) count too.
MULTIPLE_CHOICE_QUESTION_PREFIXES = (
    "object_rel_distance", "object_rel_direction", "obj_appearance_order", "route_planning",
    "camera_obj_rel_dist", "camera_movement_direction", "obj_obj_relative_pos",
)  # fmt: skip
VSTI_PREFIXES = ("camera_", "obj_obj_relative_pos")
EXTENDED_BENCHMARK = "vlm3r-ext"
EXTENDED_QUESTION_TYPES = frozenset(
    {
        "object_depth_order",
        "object_depth_order_v2",
        "object_camera_direction",
        "object_camera_clock",
        "perspective_taking_lr",
        "perspective_taking_fb",
        "object_height_comparison",
        "object_volume_comparison",
        "object_length_comparison",
        "multiview_correspondence",
        "route_planning_one_turn",
    }
)
BENCHMARKS = ("vsibench", "vstibench", EXTENDED_BENCHMARK)


def is_numeric_question(question_type: str) -> bool:
    return question_type in NUMERIC_QUESTION_UNITS


def is_multiple_choice_question(question_type: str) -> bool:
    return question_type.startswith(MULTIPLE_CHOICE_QUESTION_PREFIXES)


def benchmark_of(question_type: str) -> str:
    """``"vlm3r-ext"`` for the extended families' question types, ``"vstibench"`` for camera and
    object-object position questions, else ``"vsibench"``."""
    if question_type in EXTENDED_QUESTION_TYPES:
        return EXTENDED_BENCHMARK
    return "vstibench" if question_type.startswith(VSTI_PREFIXES) else "vsibench"


def official_parse(prediction: str) -> str:
    """The official answer extraction: surrounding whitespace stripped (as lmms-eval does before
    scoring), first space-separated token, trailing ``.`` removed."""
    return prediction.strip().split(" ")[0].rstrip(".").strip()


def mean_relative_accuracy(prediction: float, ground_truth: float) -> float:
    """Mean over thresholds θ in {0.50, ..., 0.95} of ``|pred - gt| / gt <= 1 - θ``."""
    relative_error = abs(prediction - ground_truth) / ground_truth
    return float(np.mean(relative_error <= 1 - MRA_THRESHOLDS))


def _target(ground_truth: str, mc_answer: str | None) -> str:
    return mc_answer if mc_answer else ground_truth


def score_official(question_type: str, prediction: str, ground_truth: str, mc_answer: str | None = None) -> float:
    """Score of one prediction under the official rules, in [0, 1]."""
    parsed = official_parse(prediction)
    if not is_numeric_question(question_type):
        return 1.0 if parsed.lower() == _target(ground_truth, mc_answer).lower() else 0.0
    try:
        return mean_relative_accuracy(float(parsed), float(ground_truth))
    except (TypeError, ValueError, ZeroDivisionError):
        return 0.0


_LETTER_PATTERNS = [
    re.compile(r"^\s*\(?([A-Z])\s*[\.\):]?(?:\s|$)"),  # "B", "B.", "B)", "(B)", "B: chair"
    re.compile(r"\b(?:answer|option)\s*(?:is|:)?\s*\(?([A-Z])\b", re.IGNORECASE),  # "The answer is B"
]
_NUMBER = r"[-+]?\d+(?:,\d{3})*(?:\.\d+)?|[-+]?\.\d+"
_UNIT_TO_BASE = {  # factor to metres (length) or square metres (area)
    "mm": ("m", 0.001), "millimeter": ("m", 0.001), "millimeters": ("m", 0.001), "millimetres": ("m", 0.001),
    "cm": ("m", 0.01), "centimeter": ("m", 0.01), "centimeters": ("m", 0.01), "centimetres": ("m", 0.01),
    "m": ("m", 1.0), "meter": ("m", 1.0), "meters": ("m", 1.0), "metre": ("m", 1.0), "metres": ("m", 1.0),
    "km": ("m", 1000.0),
    "ft": ("m", 0.3048), "feet": ("m", 0.3048), "foot": ("m", 0.3048),
    "in": ("m", 0.0254), "inch": ("m", 0.0254), "inches": ("m", 0.0254),
    "m2": ("m2", 1.0), "m²": ("m2", 1.0), "sqm": ("m2", 1.0), "sq m": ("m2", 1.0),
    "square meters": ("m2", 1.0), "square metres": ("m2", 1.0), "square meter": ("m2", 1.0),
    "sq ft": ("m2", 0.092903), "square feet": ("m2", 0.092903),
}
_UNIT_PATTERN = "|".join(sorted((re.escape(u) for u in _UNIT_TO_BASE), key=len, reverse=True))
_NUMBER_WITH_UNIT = re.compile(rf"({_NUMBER})\s*({_UNIT_PATTERN})?(?![A-Za-z])", re.IGNORECASE)


def lenient_parse_choice(prediction: str, options: Sequence[str]) -> str | None:
    """The chosen letter from free text, or None. Options are lettered ``"A. chair"``."""
    for pattern in _LETTER_PATTERNS:
        m = pattern.search(prediction.strip())
        if m and (not options or any(o.upper().startswith(m.group(1).upper() + ".") for o in options)):
            return m.group(1).upper()
    text = prediction.strip().rstrip(".").lower()
    matches = [o.split(".", 1)[0].strip().upper() for o in options if o.split(".", 1)[-1].strip().lower() == text]
    return matches[0] if len(matches) == 1 else None


def lenient_parse_number(prediction: str, question_type: str) -> float | None:
    """The first number in free text, converted to the question's unit when a unit is written."""
    m = _NUMBER_WITH_UNIT.search(prediction)
    if not m:
        return None
    value = float(m.group(1).replace(",", ""))
    unit = (m.group(2) or "").lower()
    wanted = NUMERIC_QUESTION_UNITS.get(question_type)
    if not unit or wanted is None or unit not in _UNIT_TO_BASE:
        return value
    base, factor = _UNIT_TO_BASE[unit]
    wanted_base, wanted_factor = ("m", 0.01) if wanted == "cm" else (wanted, 1.0)
    if base != wanted_base:
        return value  # a length for an area question: keep the number as written
    return value * factor / wanted_factor


def score_lenient(
    question_type: str, prediction: str, ground_truth: str, mc_answer: str | None = None, options: Sequence[str] = ()
) -> float:
    """Score with the lenient parser, in [0, 1]."""
    if not is_numeric_question(question_type):
        letter = lenient_parse_choice(prediction, options)
        return 1.0 if letter is not None and letter.lower() == _target(ground_truth, mc_answer).lower() else 0.0
    value = lenient_parse_number(prediction, question_type)
    if value is None:
        return 0.0
    try:
        return mean_relative_accuracy(value, float(ground_truth))
    except (ValueError, ZeroDivisionError):
        return 0.0


@dataclass(frozen=True)
class ScoredRow:
    question_type: str
    official: float
    lenient: float


@dataclass(frozen=True)
class BenchmarkSummary:
    """Scores x 100 per task and overall, official and lenient, for one benchmark.

    ``tasks`` maps a task (the rows' question types, with relative direction merged for
    VSI-Bench) to ``(official, lenient, count)``.
    """

    benchmark: str
    tasks: dict[str, tuple[float, float, int]]
    overall_official: float
    overall_lenient: float

    def to_dict(self) -> dict:
        return {
            "benchmark": self.benchmark,
            "overall": {"official": self.overall_official, "lenient": self.overall_lenient},
            "tasks": {t: {"official": o, "lenient": le, "count": n} for t, (o, le, n) in self.tasks.items()},
        }


def summarize(rows: Iterable[ScoredRow]) -> dict[str, BenchmarkSummary]:
    """Aggregates scored rows per benchmark with the official rules (see the module docstring)."""
    by_type: dict[str, list[ScoredRow]] = defaultdict(list)
    for row in rows:
        by_type[row.question_type].append(row)
    out: dict[str, BenchmarkSummary] = {}
    for benchmark in BENCHMARKS:
        types = sorted(t for t in by_type if benchmark_of(t) == benchmark)
        if not types:
            continue
        per_type = {
            t: (
                float(np.mean([r.official for r in by_type[t]])),
                float(np.mean([r.lenient for r in by_type[t]])),
                len(by_type[t]),
            )
            for t in types
        }
        tasks = dict(per_type)
        if benchmark == "vsibench":
            levels = [t for t in REL_DIRECTION_LEVELS if t in per_type]
            if levels:
                for t in levels:
                    del tasks[t]
                tasks["object_rel_direction"] = (
                    float(np.mean([per_type[t][0] for t in levels])),
                    float(np.mean([per_type[t][1] for t in levels])),
                    sum(per_type[t][2] for t in levels),
                )
        tasks = {t: (100 * o, 100 * le, n) for t, (o, le, n) in sorted(tasks.items())}
        out[benchmark] = BenchmarkSummary(
            benchmark=benchmark,
            tasks=tasks,
            overall_official=float(np.mean([v[0] for v in tasks.values()])),
            overall_lenient=float(np.mean([v[1] for v in tasks.values()])),
        )
    return out


@dataclass(frozen=True)
class ChanceLevels:
    """VSI-Bench's two chance rows for one benchmark, x 100, per task (as in :class:`BenchmarkSummary`)
    and overall; ``None`` where a random guess is undefined (numeric questions)."""

    benchmark: str
    chance: dict[str, float | None]
    frequency: dict[str, float]
    chance_overall: float | None
    frequency_overall: float

    def to_dict(self) -> dict:
        return {
            "chance": {"tasks": dict(self.chance), "overall": self.chance_overall},
            "frequency": {"tasks": dict(self.frequency), "overall": self.frequency_overall},
        }

    @classmethod
    def from_dict(cls, benchmark: str, data: dict) -> ChanceLevels:
        return cls(
            benchmark=benchmark,
            chance=dict(data["chance"]["tasks"]),
            frequency=dict(data["frequency"]["tasks"]),
            chance_overall=data["chance"]["overall"],
            frequency_overall=data["frequency"]["overall"],
        )


def _option_parts(option: str) -> tuple[str, str]:
    """``"A. chair"`` -> ``("A", "chair")``."""
    letter, _, text = option.partition(".")
    return letter.strip().upper(), text.strip()


def _most_frequent_number(values: Iterable[str]) -> float | None:
    counts = Counter()
    for v in values:
        try:
            counts[float(v)] += 1
        except (TypeError, ValueError):
            continue
    if not counts:
        return None
    top = max(counts.values())
    return min(v for v, n in counts.items() if n == top)


def chance_levels(rows: Iterable[tuple[str, Sequence[str], str, str | None]]) -> dict[str, ChanceLevels]:
    """VSI-Bench's chance rows (see the module docstring) for benchmark rows given as
    ``(question_type, options, ground_truth, mc_answer)``, per benchmark."""
    by_type: dict[str, list[tuple[Sequence[str], str, str | None]]] = defaultdict(list)
    for question_type, options, ground_truth, mc_answer in rows:
        by_type[question_type].append((options, ground_truth, mc_answer))
    chance_rows, frequency_rows = [], []
    for question_type, items in by_type.items():
        if is_numeric_question(question_type):
            mode = _most_frequent_number(gt for _, gt, _ in items)
            for _, gt, mc in items:
                score = 0.0 if mode is None else score_official(question_type, repr(mode), gt, mc)
                frequency_rows.append(ScoredRow(question_type, score, score))
            continue
        letters, texts = Counter(), Counter()
        for options, gt, mc in items:
            target = _target(gt, mc).strip().upper()
            letters[target] += 1
            texts.update(text for letter, text in map(_option_parts, options) if letter == target)
        top_letter = min(letters, key=lambda k: (-letters[k], k))
        top_text = min(texts, key=lambda k: (-texts[k], k)) if texts else None
        if top_text is not None and texts[top_text] < 2:
            top_text = None  # an answer given once is no frequent answer
        for options, gt, mc in items:
            by_text = {text: letter for letter, text in map(_option_parts, options)}
            guess = by_text.get(top_text, top_letter) if top_text is not None else top_letter
            score = score_official(question_type, guess, gt, mc)
            frequency_rows.append(ScoredRow(question_type, score, score))
            chance = 1.0 / len(options) if options else 0.0
            chance_rows.append(ScoredRow(question_type, chance, chance))
    frequency, chance = summarize(frequency_rows), summarize(chance_rows)
    out = {}
    for name, f in frequency.items():
        c = chance.get(name)
        chance_tasks = {t: (c.tasks[t][0] if c is not None and t in c.tasks else None) for t in f.tasks}
        defined = all(v is not None for v in chance_tasks.values())
        out[name] = ChanceLevels(
            benchmark=name,
            chance=chance_tasks,
            frequency={t: v[0] for t, v in f.tasks.items()},
            chance_overall=c.overall_official if c is not None and defined else None,
            frequency_overall=f.overall_official,
        )
    return out


def _cell(value: float | None, bold: bool = False) -> str:
    text = "-" if value is None else f"{value:.1f}"
    return f"**{text}**" if bold else text


def summary_markdown(
    summaries: dict[str, BenchmarkSummary],
    title: str = "",
    baseline: dict[str, BenchmarkSummary] | None = None,
    chance: dict[str, ChanceLevels] | None = None,
) -> str:
    """A markdown table per benchmark: task, count, official, lenient, the chance levels (random
    guess, most frequent answer) when given, and the baseline run's scores when given."""
    lines = [f"## {title}", ""] if title else []
    for name, s in summaries.items():
        base = (baseline or {}).get(name)
        levels = (chance or {}).get(name)
        head, rule = "| task | n | official | lenient |", "|---|---:|---:|---:|"
        if levels:
            head, rule = head + " chance | frequency |", rule + "---:|---:|"
        if base:
            head, rule = head + " baseline official | baseline lenient |", rule + "---:|---:|"
        lines += [f"### {s.benchmark}", "", head, rule]
        for t, (o, le, n) in s.tasks.items():
            row = f"| {t} | {n} | {o:.1f} | {le:.1f} |"
            if levels:
                row += f" {_cell(levels.chance.get(t))} | {_cell(levels.frequency.get(t))} |"
            if base:
                bo, bl = base.tasks[t][:2] if t in base.tasks else (float("nan"), float("nan"))
                row += f" {bo:.1f} | {bl:.1f} |"
            lines.append(row)
        overall = f"| **overall** | | **{s.overall_official:.1f}** | **{s.overall_lenient:.1f}** |"
        if levels:
            overall += f" {_cell(levels.chance_overall, True)} | {_cell(levels.frequency_overall, True)} |"
        if base:
            overall += f" **{base.overall_official:.1f}** | **{base.overall_lenient:.1f}** |"
        lines += [overall, ""]
    if chance:
        lines += [
            "chance: a random guess (1 / options; undefined for numeric answers); frequency: always the "
            "most frequent answer of the question type (VSI-Bench's two chance-level rows).",
            "",
        ]
    return "\n".join(lines)
