"""Answer bias: how well a model that never sees the video answers, and pruning until it cannot.

Three *blind baselines* are fitted per question type on training rows and scored on held-out
rows. They read only a row's text (question and choices), never the scene:

- ``frequency``: multiple choice, the choice whose text was most often the correct one for the
  question type in training (correct / offered, smoothed); numeric, the median training answer of
  the type.
- ``category``: the same per object category (the first object the question names, recovered
  from the row's template; rare categories back off to the type's figures).
- ``text``: a naive Bayes classifier over the question's words and word pairs (lower-case
  ``[a-z0-9]+`` tokens, hashed), written with plain counters: multiple choice, classes are the choice texts
  and the prediction is the most likely of the row's own choices; numeric, classes are log-spaced
  answer bins (25 % wide) and the prediction is the centre of the most likely one.

Scores are the official ones: accuracy for multiple choice, mean relative accuracy (MRA) for
numeric answers. *Chance* is the mean of 1/choices for multiple choice; for numeric answers it is
the ``frequency`` baseline itself (always answering the type's typical value), so the figures to
watch there are ``category`` and ``text`` against it.

Held-out rows: every row of a split other than ``train``, and the ``train`` rows of one scene in
five (chosen by a CRC-32 of the seed, dataset and scene); the baselines are fitted on the
other ``train`` rows. Rows are read scene by scene and the baselines keep only integer counts in
hashed buckets, so memory does not grow with the number of rows beyond the vocabulary of the
questions, and the fitted counts, summed over any partition of the scenes in any order, are the
same (the result does not depend on the number of workers).

Debiasing (:func:`measure_bias` with ``debias=True``) prunes rows in rounds, after the idea of
VSI-Bench-Debiased's iterative bias pruning. Each round fits the baselines on the surviving
training rows; for each question type whose held-out baselines sit more than ``tolerance`` above
chance (by more than two standard errors of a score at chance on the held-out rows, so that
small sets are not pruned for luck), it takes the baseline furthest above and removes an even share (by a hash of the row id)
of the rows it beats chance on (multiple choice: answers right; numeric: scores above
``frequency``): the fewest rows that bring it to half the tolerance, taken evenly across
categories and answers so that what it learned flattens out. The next round refits on what is
left, until every type sits near chance or the rounds run out. A row is kept when no round's rule
removes it: a pure function of the row and the rounds' fitted counts, so the writers apply it
shard by shard (:meth:`BiasRounds.keeps`).
"""

from __future__ import annotations

import math
import re
import string
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from datagen.tasks import TASKS
from vlm3r_core.metrics import MRA_THRESHOLDS

BASELINES = ("frequency", "category", "text")
HELD_OUT_FOLDS = 5  # one scene in five of the train split is held out
TOKEN = re.compile(r"[a-z0-9]+")
TOKEN_BUCKETS = 1 << 16  # hashed question words
CLASS_BUCKETS = 1 << 12  # hashed choice texts (multiple choice)
FINE_BIN = math.log(1.02)  # numeric answers: 2 %-wide log bins for medians
COARSE_BIN = math.log(1.25)  # numeric answers: 25 %-wide log bins, the text classifier's classes
MIN_CATEGORY_ROWS = 3  # numeric: fewer training rows of a category -> the type's median
# Integer score units, so sums do not depend on the order rows are added in:
MC_UNIT = 12  # multiple choice: 1/2, 1/3, 1/4 and 1 are whole multiples of 1/12
NA_UNIT = 10  # MRA: a multiple of 1/10 (10 thresholds)


def _hash(text: str, buckets: int) -> int:
    return zlib.crc32(text.encode()) % buckets


def tokens(question: str) -> list[int]:
    """The hashed words and word pairs of a question (pairs give the classifier some word order:
    "bed and facing" is not "facing the bed")."""
    words = TOKEN.findall(question.lower())
    return [_hash(t, TOKEN_BUCKETS) for t in words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]]


# ---- the object category a question names -------------------------------------------------------


OBJECT_FIELDS = (
    "category", "object_name", "object1", "object2", "obj_A_name", "obj_B_name", "positioning_object",
    "orienting_object", "querying_object", "start_object", "facing_object", "destination_object",
)  # fmt: skip
"""Template placeholders that hold an object category (the others hold choices, frames, boxes, steps)."""


def _template_pattern(text: str) -> tuple[re.Pattern, list[str]]:
    """A regex matching the filled template (one named group per placeholder) and the placeholders in text order."""
    parts, seen = [], []
    for literal, name, _, _ in string.Formatter().parse(text):
        parts.append(re.escape(literal))
        if name is None:
            continue
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>.+?)")
        if name not in seen:
            seen.append(name)
    return re.compile("".join(parts), re.DOTALL), seen


_PATTERNS: dict[str, tuple[re.Pattern, str | None]] = {}


def _pattern(template_id: str) -> tuple[re.Pattern, str | None] | None:
    """The regex of a template id and the placeholder that names the question's object: the first
    object placeholder of the question type's official template (the same for every paraphrase)."""
    if template_id not in _PATTERNS:
        question_type, _, k = template_id.rpartition("/")
        paraphrases = next((t.paraphrases[question_type] for t in TASKS.values() if question_type in t.paraphrases), None)
        if paraphrases is None or not k.isdigit() or int(k) >= len(paraphrases.templates):
            return None
        official = _template_pattern(paraphrases.official.text)[1]
        name = next((f for f in official if f in OBJECT_FIELDS), None)
        _PATTERNS[template_id] = (_template_pattern(paraphrases.templates[int(k)].text)[0], name)
    return _PATTERNS[template_id]


def question_category(question: str, template_id: str) -> str:
    """The object category a question is about: the value of the first object placeholder of its
    type's official template; ``""`` for questions about no object or an unknown template."""
    found = _pattern(template_id)
    if found is None or found[1] is None:
        return ""
    pattern, name = found
    match = pattern.fullmatch(question)
    return "" if match is None else match.group(name)


# ---- one row, as the baselines see it ------------------------------------------------------------


@dataclass(frozen=True)
class BlindRow:
    """What a blind baseline may read of a row (pre-letter rows of :mod:`datagen.qa`), and its id."""

    id: str
    question_type: str
    category: str
    tokens: tuple[int, ...]
    choices: tuple[str, ...]  # empty: numeric
    answer: str

    @classmethod
    def of(cls, row: Mapping) -> BlindRow:
        return cls(
            id=row["id"],
            question_type=row["question_type"],
            category=question_category(row["question"], row.get("template") or ""),
            tokens=tuple(tokens(row["question"])),
            choices=tuple(row["choices"] or ()),
            answer=row["answer"],
        )

    @property
    def numeric(self) -> bool:
        return not self.choices


def is_held_out(row: Mapping, seed: int) -> bool:
    """Rows of splits other than ``train``, and the ``train`` rows of one scene in five."""
    if row["split"] != "train":
        return True
    key = f"{seed}\x1fbias-fold\x1f{row['dataset']}\x1f{row['scene_name']}"
    return zlib.crc32(key.encode()) % HELD_OUT_FOLDS == 0


def _fine_bin(value: float) -> int | None:
    return None if value <= 0 else math.floor(math.log(value) / FINE_BIN)


def _coarse_bin(value: float) -> int | None:
    return None if value <= 0 else math.floor(math.log(value) / COARSE_BIN)


def _bin_centre(b: int | None, width: float) -> float:
    return 0.0 if b is None else math.exp((b + 0.5) * width)


def mra(prediction: float, truth: float) -> float:
    """Mean relative accuracy (0 for a ground truth of 0, as the official scorer's failure)."""
    if truth == 0:
        return 0.0
    return float(np.mean(abs(prediction - truth) / abs(truth) <= 1 - MRA_THRESHOLDS))


# ---- fitting: integer counts ---------------------------------------------------------------------


@dataclass
class TypeCounts:
    """Training counts of one question type (integers only: sums in any order agree)."""

    numeric: bool
    rows: int = 0
    # multiple choice: how often a choice text (hashed) was offered / correct, overall and per category
    offered: Counter = field(default_factory=Counter)
    correct: Counter = field(default_factory=Counter)
    category_offered: Counter = field(default_factory=Counter)
    category_correct: Counter = field(default_factory=Counter)
    # numeric: fine log bins of the answers, overall and per category
    answers: Counter = field(default_factory=Counter)
    category_answers: Counter = field(default_factory=Counter)
    # naive Bayes: rows per class, words per class, (class, word) counts, the words seen
    class_rows: Counter = field(default_factory=Counter)
    class_words: Counter = field(default_factory=Counter)
    words: Counter = field(default_factory=Counter)
    vocabulary: set = field(default_factory=set)

    def add(self, row: BlindRow) -> None:
        self.rows += 1
        if row.numeric:
            value = float(row.answer)
            self.answers[_fine_bin(value)] += 1
            self.category_answers[(row.category, _fine_bin(value))] += 1
            label = _coarse_bin(value)
        else:
            for choice in row.choices:
                c = _hash(choice, CLASS_BUCKETS)
                self.offered[c] += 1
                self.category_offered[(row.category, c)] += 1
            label = _hash(row.answer, CLASS_BUCKETS)
            self.correct[label] += 1
            self.category_correct[(row.category, label)] += 1
        self.class_rows[label] += 1
        self.class_words[label] += len(row.tokens)
        self.words.update((label, t) for t in row.tokens)
        self.vocabulary.update(row.tokens)

    def merge(self, other: TypeCounts) -> None:
        self.rows += other.rows
        for name in ("offered", "correct", "category_offered", "category_correct", "answers",
                     "category_answers", "class_rows", "class_words", "words"):  # fmt: skip
            getattr(self, name).update(getattr(other, name))
        self.vocabulary |= other.vocabulary


@dataclass
class BlindCounts:
    """Training counts of every question type; ``merge`` sums partial counts (one per shard group)."""

    types: dict[str, TypeCounts] = field(default_factory=dict)

    def add(self, row: BlindRow) -> None:
        if row.question_type not in self.types:
            self.types[row.question_type] = TypeCounts(row.numeric)
        self.types[row.question_type].add(row)

    def merge(self, other: BlindCounts) -> BlindCounts:
        for name, counts in other.types.items():
            if name in self.types:
                self.types[name].merge(counts)
            else:
                self.types[name] = counts
        return self


def _median_bin(hist: Mapping) -> int | None:
    """The median of a histogram of fine bins (None, the zero bin, sorts first)."""
    total = sum(hist.values())
    seen = 0
    for b in sorted(hist, key=lambda b: -math.inf if b is None else b):
        seen += hist[b]
        if 2 * seen >= total:
            return b
    return None


@dataclass(frozen=True)
class Prediction:
    """The baselines on one row: each one's score (in integer units), the row's chance level, and
    which baselines beat chance on it.

    Attributes:
        scores: baseline -> score in units (``MC_UNIT`` per correct multiple-choice answer,
            ``NA_UNIT`` x MRA for numeric answers).
        chance: the row's chance level in the same units.
        beats: the baselines that do better than chance on the row (multiple choice: answer it
            right; numeric: score above ``frequency``).
    """

    scores: dict[str, int]
    chance: int
    beats: frozenset[str]


class TypeModel:
    """The fitted baselines of one question type."""

    def __init__(self, counts: TypeCounts):
        self.counts = counts
        self.numeric = counts.numeric
        n_words = len(counts.vocabulary) + 1
        self._word_norm = {c: math.log(counts.class_words[c] + n_words) for c in counts.class_rows}
        self._unseen_word = {c: -self._word_norm[c] for c in counts.class_rows}
        self._log_prior = {c: math.log(n) for c, n in counts.class_rows.items()}
        self._unseen_class = -math.log(counts.rows + n_words)  # a class never seen in training, per word
        if self.numeric:
            self.median = _bin_centre(_median_bin(counts.answers), FINE_BIN)
            by_category: dict[str, Counter] = {}
            for (category, b), n in counts.category_answers.items():
                by_category.setdefault(category, Counter())[b] += n
            self.category_median = {
                cat: _bin_centre(_median_bin(hist), FINE_BIN)
                for cat, hist in by_category.items()
                if sum(hist.values()) >= MIN_CATEGORY_ROWS
            }

    def _text_score(self, label, words: Sequence[int]) -> float:
        if label not in self.counts.class_rows:
            return self._unseen_class * (len(words) + 1)
        norm, pairs = self._word_norm[label], self.counts.words
        return self._log_prior[label] + sum(math.log(pairs.get((label, w), 0) + 1) - norm for w in words)

    def _choice_scores(self, row: BlindRow) -> dict[str, list[float]]:
        c = self.counts
        out = {b: [] for b in BASELINES}
        for choice in row.choices:
            h = _hash(choice, CLASS_BUCKETS)
            p = (c.correct[h] + 1) / (c.offered[h] + 2)
            key = (row.category, h)
            out["frequency"].append(math.log(p))
            out["category"].append(math.log((c.category_correct[key] + 2 * p) / (c.category_offered[key] + 2)))
            out["text"].append(self._text_score(h, row.tokens))
        return out

    def predict(self, row: BlindRow) -> Prediction:
        if self.numeric:
            truth = float(row.answer)
            guesses = {
                "frequency": self.median,
                "category": self.category_median.get(row.category, self.median),
                "text": _bin_centre(
                    max(self.counts.class_rows, key=lambda b: (self._text_score(b, row.tokens), -(b or 0)))
                    if self.counts.class_rows
                    else None,
                    COARSE_BIN,
                ),
            }
            scores = {b: round(NA_UNIT * mra(g, truth)) for b, g in guesses.items()}
            beats = frozenset(b for b in BASELINES if scores[b] > scores["frequency"])
            return Prediction(scores, scores["frequency"], beats)
        answer = row.choices.index(row.answer)
        order = sorted(range(len(row.choices)), key=lambda i: row.choices[i])  # ties: by text, never by position
        scores = {}
        for b, values in self._choice_scores(row).items():
            best = max(order, key=lambda i: values[i])  # the first of the highest, in text order
            scores[b] = MC_UNIT if best == answer else 0
        return Prediction(scores, MC_UNIT // len(row.choices), frozenset(b for b in BASELINES if scores[b]))


class BlindModel:
    """The fitted baselines of every question type seen in training."""

    def __init__(self, counts: BlindCounts):
        self.types = {name: TypeModel(c) for name, c in counts.types.items()}

    def predict(self, row: BlindRow) -> Prediction | None:
        """None for a question type without training rows."""
        model = self.types.get(row.question_type)
        return None if model is None else model.predict(row)


# ---- scoring held-out rows -----------------------------------------------------------------------


@dataclass
class TypeScores:
    """Held-out rows of one question type: rows, chance and each baseline's score (integer units),
    over all rows and, per baseline, over the rows it beats chance on."""

    numeric: bool
    totals: Counter = field(default_factory=Counter)  # "rows", "chance", "score:<b>"
    beaten: dict[str, Counter] = field(default_factory=lambda: {b: Counter() for b in BASELINES})

    def add(self, p: Prediction) -> None:
        figures = {"rows": 1, "chance": p.chance, **{f"score:{b}": s for b, s in p.scores.items()}}
        self.totals.update(figures)
        for b in p.beats:
            self.beaten[b].update(figures)

    def merge(self, other: TypeScores) -> None:
        self.totals.update(other.totals)
        for b in BASELINES:
            self.beaten[b].update(other.beaten[b])

    @property
    def unit(self) -> int:
        return NA_UNIT if self.numeric else MC_UNIT

    @property
    def checked(self) -> tuple[str, ...]:
        """The baselines held against chance (numeric: ``frequency`` is the chance level)."""
        return ("category", "text") if self.numeric else BASELINES

    def figures(self) -> dict:
        """Rows, chance, each baseline's score (fractions) and ``noise``, the sampling error allowed."""
        n = self.totals["rows"]
        scale = n * self.unit or 1
        out = {"metric": "MRA" if self.numeric else "accuracy", "rows_held_out": n,
               "chance": self.totals["chance"] / scale, "noise": self.noise()}  # fmt: skip
        return out | {b: self.totals[f"score:{b}"] / scale for b in BASELINES}

    def noise(self) -> float:
        """Two standard errors of a score at chance on these rows (binomial for multiple choice;
        the largest for a score in [0, 1] for numeric answers): held-out sets this small cannot
        tell a bias below it from luck."""
        n = self.totals["rows"]
        if not n:
            return 1.0
        p = 0.5 if self.numeric else self.totals["chance"] / (n * self.unit)
        return 2 * math.sqrt(p * (1 - p) / n)

    def _excess(self, figures: Counter, b: str, t: float) -> float:
        return figures[f"score:{b}"] - figures["chance"] - t * figures["rows"]

    def near_chance(self, tolerance: float) -> bool:
        """Every baseline at most ``tolerance`` plus :meth:`noise` above chance."""
        t = (tolerance + self.noise()) * self.unit
        return all(self._excess(self.totals, b, t) <= 0 for b in self.checked)

    def threshold(self, tolerance: float) -> tuple[str, float]:
        """Which rows to keep so that the baseline furthest above chance, ``b``, sits at ``chance +
        tolerance``: ``(b, f)``, every row ``b`` does not beat chance on and the share ``f`` of the others.

        Any ``x`` rows ``b`` answers right lower its score alike; taking them evenly from all
        categories and answers flattens what it learned (removing its surest rows first would empty
        some categories and skew the answers the others see). With the rows ``b`` beats (score
        ``S``, chance ``C``, ``N`` rows) and the rest (``s``, ``c``, ``n``), ``b`` is at the limit when
        ``s + f S = c + f C + t (n + f N)``.
        """
        t = tolerance * self.unit
        b = max(self.checked, key=lambda name: (self._excess(self.totals, name, t), -self.checked.index(name)))
        beaten = self.beaten[b]
        rest = Counter(self.totals)
        rest.subtract(beaten)
        over = self._excess(beaten, b, t)
        return b, 1.0 if over <= 0 else max(0.0, min(1.0, -self._excess(rest, b, t) / over))


@dataclass
class HeldOutScores:
    """Held-out scores of every question type (integer sums: any order gives the same)."""

    types: dict[str, TypeScores] = field(default_factory=dict)

    def add(self, row: BlindRow, p: Prediction) -> None:
        if row.question_type not in self.types:
            self.types[row.question_type] = TypeScores(row.numeric)
        self.types[row.question_type].add(p)

    def merge(self, other: HeldOutScores) -> HeldOutScores:
        for name, scores in other.types.items():
            if name in self.types:
                self.types[name].merge(scores)
            else:
                self.types[name] = scores
        return self


# ---- the rounds: which rows survive ---------------------------------------------------------------


def _share(seed: int, round_: int, row_id: str) -> float:
    """A row's place in [0, 1) for keeping a share of a margin bin (the same on every worker)."""
    return zlib.crc32(f"{seed}\x1f{round_}\x1f{row_id}".encode()) / 2**32


@dataclass
class BiasRounds:
    """The pruning rounds so far: each round's fitted model and, per question type, the rows it
    keeps, ``(b, f)``: those baseline ``b`` does not beat chance on, and a share ``f`` of the others
    chosen by a hash of the row id (types not named keep every row)."""

    seed: int = 0
    rounds: list[tuple[BlindModel, dict[str, tuple[str, float]]]] = field(default_factory=list)

    def keeps(self, row: BlindRow) -> bool:
        for n, (model, thresholds) in enumerate(self.rounds):
            if row.question_type not in thresholds:
                continue
            baseline, share = thresholds[row.question_type]
            p = model.predict(row)
            if p is not None and baseline in p.beats and _share(self.seed, n, row.id) >= share:
                return False
        return True


RowSource = Callable[[object], Iterable[Mapping]]
"""Reads the pre-letter rows of one item of work (a shard group), scene by scene."""


def fit_counts(rows: Iterable[Mapping], seed: int, rounds: BiasRounds) -> BlindCounts:
    """Counts of the training rows (not held out) that survive ``rounds``."""
    counts = BlindCounts()
    for row in rows:
        if is_held_out(row, seed):
            continue
        blind = BlindRow.of(row)
        if rounds.keeps(blind):
            counts.add(blind)
    return counts


def score_held_out(rows: Iterable[Mapping], seed: int, rounds: BiasRounds, model: BlindModel) -> HeldOutScores:
    """``model``'s scores on the held-out rows that survive ``rounds``."""
    scores = HeldOutScores()
    for row in rows:
        if not is_held_out(row, seed):
            continue
        blind = BlindRow.of(row)
        if not rounds.keeps(blind):
            continue
        p = model.predict(blind)
        if p is not None:
            scores.add(blind, p)
    return scores


def report(scores: HeldOutScores, counts: BlindCounts) -> dict:
    """Per question type and macro mean: rows, chance and each baseline's score (the manifest's ``bias``)."""
    types = {}
    for name in sorted(scores.types):
        figures = scores.types[name].figures()
        types[name] = {"rows_fit": counts.types[name].rows if name in counts.types else 0, **figures}
    keys = ("chance", *BASELINES)
    mean = {k: float(np.mean([t[k] for t in types.values()])) if types else None for k in keys}
    return {
        "held_out": "rows of splits other than train, and the train rows of one scene in five; "
        "baselines fitted on the other train rows",
        "rows_fit": sum(c.rows for c in counts.types.values()),
        "rows_held_out": sum(t["rows_held_out"] for t in types.values()),
        "question_types": types,
        "mean": mean,
    }


@dataclass(frozen=True)
class BiasResult:
    """What :func:`measure_bias` found: the figures of the rows as written, and the pruning rule.

    Attributes:
        report: per question type, the blind baselines against chance on the held-out rows that
            are written (after debiasing when it ran).
        before: the same before debiasing (None when it did not run).
        rounds: the pruning rule the writers apply (no rounds: every row is kept).
        tolerance: how far above chance a baseline may sit.
    """

    report: dict
    before: dict | None
    rounds: BiasRounds
    tolerance: float


def measure_bias(
    items: Sequence,
    read_rows: RowSource,
    seed: int,
    map_fn: Callable = map,
    debias: bool = False,
    tolerance: float = 0.05,
    max_rounds: int = 3,
) -> BiasResult:
    """Fits and scores the blind baselines; with ``debias``, prunes in rounds until they sit near chance.

    Args:
        items: units of work (shard groups); ``read_rows(item)`` yields its pre-letter rows.
        map_fn: ``map_fn(fn, items)`` -> ``fn(item)`` for every item, in any order (``map``, or
            the job's Ray map): each pass over the rows runs item by item, the driver only sums
            the partial counts.
        tolerance: a baseline counts as near chance up to ``chance + tolerance`` (plus two
            standard errors of a score at chance on the held-out rows, :meth:`TypeScores.noise`).
        max_rounds: at most this many pruning rounds.
    """
    rounds = BiasRounds(seed)
    before = None
    for r in range(max_rounds + 1):
        counts = _reduce(map_fn(_FitItem(read_rows, seed, rounds), items), BlindCounts())
        model = BlindModel(counts)
        scores = _reduce(map_fn(_ScoreItem(read_rows, seed, rounds, model), items), HeldOutScores())
        figures = report(scores, counts)
        if r == 0:
            before = figures
        biased = {name: s for name, s in scores.types.items() if not s.near_chance(tolerance)}
        if not debias or not biased or r == max_rounds:
            return BiasResult(figures, before if debias else None, rounds, tolerance)
        # aim at half the tolerance: the share kept is drawn by a hash of the row id, so the result scatters
        thresholds = {name: s.threshold(tolerance / 2) for name, s in biased.items()}
        rounds = BiasRounds(seed, [*rounds.rounds, (model, thresholds)])
    raise AssertionError("unreachable")


def _reduce(parts: Iterable, total):
    for part in parts:
        total.merge(part)
    return total


@dataclass(frozen=True)
class _FitItem:
    read_rows: RowSource
    seed: int
    rounds: BiasRounds

    def __call__(self, item) -> BlindCounts:
        return fit_counts(self.read_rows(item), self.seed, self.rounds)


@dataclass(frozen=True)
class _ScoreItem:
    read_rows: RowSource
    seed: int
    rounds: BiasRounds
    model: BlindModel

    def __call__(self, item) -> HeldOutScores:
        return score_held_out(self.read_rows(item), self.seed, self.rounds, self.model)
