"""Benchmark rows in, scored predictions and reports out (VSI-Bench / VSTI-Bench): the evaluation run.

Reads our generated benchmark files and the official released ones (parquet, JSON or JSON lines
with the official field names: VSI-Bench rows carry no video path, their video is
``{videos_root}/{dataset}/{scene_name}.mp4``; VSTI-Bench rows carry ``video_path``). Scores model
outputs with :mod:`vlm3r_core.metrics` and writes, under the output URI:

- ``predictions.jsonl``: one record per question (question, options, ground truth, raw output,
  parsed answer, official and lenient score);
- ``summary.json`` and ``summary.md``: per task and overall, official and lenient, per benchmark,
  beside VSI-Bench's two chance levels (random guess, most frequent answer:
  :func:`vlm3r_core.metrics.chance_levels`); with VSI-Bench-Debiased information (a ``pruned``
  column, or ``pruned_ids``) also ``<benchmark>-debiased``: the same scores over the questions
  Iterative Bias Pruning kept;
- ``report.html``: one self-contained page with charts and example questions with their frames
  (:mod:`vlm3r_core.report`);
- ``plots/<task>.png``: per task, predicted against true letters (multiple choice) or predicted
  against true values (numeric), and ``plots/overview_<benchmark>.png`` with a bar per task;
- ``answers.jsonl`` and ``errors.jsonl``: the run ledger (:mod:`vlm3r_core.ledger`): every answer
  as it arrives (``id``, ``video_id``, ``prediction``, ``model``), and the questions that could
  not be answered with the reason. A re-run with the same ``out`` and ``model`` answers only the
  rest; a finished run re-run only scores again.

:func:`run_evaluation` is the whole run; the answering itself is a function it is given (the job
runs :class:`vlm3r_core.inference.AnswerQuestions` on a Ray Data actor pool, or
:class:`vlm3r_core.endpoint.EndpointAnswerer` for any OpenAI-compatible endpoint; tests call them
directly).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from itertools import islice
from typing import Literal

import numpy as np

from vlm3r_core import storage
from vlm3r_core.endpoint import ENDPOINT_PREFIX, EndpointConfig, parse_endpoint
from vlm3r_core.ledger import RunLedger, RunSummary
from vlm3r_core.metrics import (
    BenchmarkSummary,
    ChanceLevels,
    ScoredRow,
    chance_levels,
    is_numeric_question,
    lenient_parse_choice,
    lenient_parse_number,
    official_parse,
    score_lenient,
    score_official,
    summarize,
    summary_markdown,
)
from vlm3r_core.report import write_html_report


@dataclass(frozen=True)
class EvalConfig:
    """An evaluation run.

    Args:
        model: ``save_pretrained`` folder/URI (``jobs/train.py`` or converter output), a preset name
            (``tiny`` = the untrained model), or ``openai:<base_url>#<model_name>``: any
            OpenAI-compatible endpoint (``openai:http://127.0.0.1:8000/v1#vlm3r``).
        benchmark: benchmark rows: a parquet file or folder, JSON or JSONL.
        out: output folder URI (predictions, summary, plots, the run ledger).
        tokens: token shard set URI (precomputed features); default: decode and encode the raw videos.
        videos_root: where ``{dataset}/{scene_name}.mp4`` lives for official benchmark files.
        split: keep only rows of this split.
        num_actors: answering actors.
        batch_size: questions per model call.
        max_new_tokens: answer length limit.
        limit: evaluate only the first N questions.
        baseline: ``summary.json`` of another run, shown beside this one.
        title: the run's name in the report (default: the model).
        dtype: run our model in this dtype instead of its config's (the official evaluation ran
            float16, ``vlm3r-7b`` is bfloat16).
        blind: answer without the video (text only), to read a score against what the question
            text alone gets.
        pruned_ids: VSI-Bench-Debiased's ``pruned_ids.txt`` (one question id a line): the summary
            also reports the debiased subset (rows with a ``pruned`` column need no file).
        endpoint: how ``openai:`` models are asked (``vlm3r_core.endpoint.EndpointConfig``).
        online: stream each video through the live-session path (the sampled frames pushed one by
            one into a ``LiveSession``, ``vlm3r_core.inference.online_contexts``) and ask after
            it ends; the answers equal the offline ones on the same frames.
        online_fractions: with ``online``, also ask each question when only these fractions of
            its video have played (each in (0, 1)); the summary gets a curve of score against
            fraction seen (``online_curve`` in ``summary.json``, ``plots/online_curve.png``).
    """

    model: str
    benchmark: str
    out: str
    tokens: str | None = None
    videos_root: str | None = None
    split: str | None = None
    num_actors: int = 1
    batch_size: int = 8
    max_new_tokens: int = 16
    limit: int | None = None
    baseline: str | None = None
    title: str = ""
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    blind: bool = False
    pruned_ids: str | None = None
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)
    online: bool = False
    online_fractions: tuple[float, ...] = ()

    def __post_init__(self):
        for name in ("num_actors", "batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}")
        if self.is_endpoint:
            parse_endpoint(self.model)
            if self.tokens or self.dtype:
                raise ValueError("tokens and dtype apply to our own models, not to an openai: endpoint")
        if self.online and (self.is_endpoint or self.tokens or self.blind):
            raise ValueError("online streams the raw videos through VLM-3R's live-session path: it takes "
                             "neither an openai: endpoint, tokens nor blind")  # fmt: skip
        if self.online_fractions and not self.online:
            raise ValueError("online_fractions needs online")
        if any(not 0.0 < f < 1.0 for f in self.online_fractions):
            raise ValueError(f"online_fractions must each lie in (0, 1), got {list(self.online_fractions)}")

    @property
    def is_endpoint(self) -> bool:
        return self.model.startswith(ENDPOINT_PREFIX)

    @property
    def answerer(self) -> str:
        """Who answers, with the settings that change the answers: the ledger keeps answers per
        answerer, so a re-run resumes only its own (``tiny``, ``tiny [bfloat16, blind]``,
        ``openai:http://host/v1#m [frames x32]``)."""
        tags = [self.dtype] if self.dtype else []
        if self.is_endpoint and self.endpoint.input == "frames":
            tags.append(f"frames x{self.endpoint.num_frames}")
        if self.blind:
            tags.append("blind")
        if self.online:
            tags.append("online")
        return f"{self.model} [{', '.join(tags)}]" if tags else self.model


AnswerFn = Callable[[Sequence["BenchmarkRow"]], Iterable[dict]]
"""Answers rows; yields ``{"id", "video_id", "prediction", "error"}`` per row as they are answered."""


def run_evaluation(cfg: EvalConfig, answer: AnswerFn) -> tuple[RunSummary, dict[str, BenchmarkSummary]]:
    """Reads the rows, answers those not answered yet (recorded as they come), scores, reports.

    Raises:
        ValueError: no benchmark rows (or a malformed one: the message names it).
    """
    rows = list(islice(iter_benchmark(cfg.benchmark, cfg.videos_root, cfg.split, cfg.pruned_ids), cfg.limit))
    if not rows:
        raise ValueError(f"no benchmark rows in {cfg.benchmark}")
    answerer = cfg.answerer
    fractions = sorted(cfg.online_fractions)
    with RunLedger("evaluate", cfg.out, "id", manifest_file="answers.jsonl", accept=lambda r: r.get("model") == answerer) as ledger:
        asked = [seen_part(r, f) for r in rows for f in [*fractions, 1.0]]  # a video's questions stay together
        by_id = {r.id: r for r in asked}
        todo = ledger.plan(by_id)
        if todo and len(todo) < len(rows):
            print(f"[evaluate] resuming: {len(rows) - len(todo)} questions answered by an earlier run, {len(todo)} to go",
                  flush=True)  # fmt: skip
        if todo:
            for a in answer([by_id[i] for i in todo]):
                if a["error"] is not None:
                    ledger.fail(a["id"], a["error"], video_id=a["video_id"])
                else:
                    ledger.record({"id": a["id"], "video_id": a["video_id"], "prediction": a["prediction"], "model": answerer})
        answered = {i: ledger.rows[i]["prediction"] for i in by_id if i in ledger.rows}
        records = score_predictions(rows, answered)
        baseline = read_summary(cfg.baseline) if cfg.baseline else None
        title = cfg.title or answerer
        run = {"model": cfg.model, "answerer": answerer, "benchmark": cfg.benchmark, "split": cfg.split,
               "dtype": cfg.dtype, "blind": cfg.blind, "max_new_tokens": cfg.max_new_tokens, "limit": cfg.limit,
               "online": cfg.online, "online_fractions": fractions}  # fmt: skip
        curve = None
        if fractions:
            by_fraction = {f: score_predictions([seen_part(r, f) for r in rows], answered) for f in fractions}
            storage.write_jsonl(storage.join(cfg.out, "predictions_online.jsonl"),
                                [r for f in fractions for r in by_fraction[f]])  # fmt: skip
            curve = online_curve({**by_fraction, 1.0: records})
        summaries = write_report(cfg.out, records, title, baseline, run=run, curve=curve)
        print(summary_markdown(summaries, title, baseline, chance_levels_of(records)), flush=True)
        if curve:
            print(online_curve_markdown(curve), flush=True)
        scores = {f"{name} official": f"{s.overall_official:.1f}" for name, s in summaries.items()}
        return ledger.close(**scores), summaries


@dataclass(frozen=True)
class BenchmarkRow:
    """One benchmark question. ``video`` is an absolute URI; ``video_id`` joins token shards."""

    id: str
    dataset: str
    scene_name: str
    question_type: str
    question: str
    options: tuple[str, ...]
    ground_truth: str
    mc_answer: str | None
    video: str
    frame_indices: tuple[int, ...] = ()
    pruned: bool | None = None  # VSI-Bench-Debiased: removed by Iterative Bias Pruning (None: unknown)
    seen_fraction: float = 1.0  # online evaluation: asked when this fraction of the video had played

    @property
    def video_id(self) -> str:
        return f"{self.dataset}/{self.scene_name}"


BENCHMARK_COLUMNS = [
    "id", "dataset", "scene_name", "question_type", "question", "options", "ground_truth", "mc_answer",
    "video", "video_path", "frame_indices", "split", "pruned",
]  # fmt: skip


def _iter_records(uri: str) -> Iterator[dict]:
    """Records of a parquet file or folder (one row group at a time), a JSON list or JSON lines."""
    if uri.endswith(".parquet") or not uri.endswith((".json", ".jsonl")):
        for table in storage.iter_parquet(uri, BENCHMARK_COLUMNS):
            yield from table.to_pylist()
        return
    if uri.endswith(".jsonl"):
        yield from storage.read_jsonl(uri)
        return
    data = storage.read_json(uri)
    if not isinstance(data, list):
        raise ValueError(f"{uri}: expected a JSON list of benchmark rows, got {type(data).__name__}")
    yield from data


def read_pruned_ids(uri: str) -> set[str]:
    """VSI-Bench-Debiased's ``pruned_ids.txt``: the ids of the questions Iterative Bias Pruning removed."""
    return {line.strip() for line in storage.read_text(uri).splitlines() if line.strip()}


def iter_benchmark(
    uri: str,
    videos_root: str | None = None,
    split: str | None = None,
    pruned_ids: str | None = None,
    on_invalid: Callable[[dict], None] | None = None,
) -> Iterator[BenchmarkRow]:
    """Benchmark rows one at a time (:func:`read_benchmark`'s arguments and errors); parquet files
    and folders of shards (``qa/benchmark/<split>``) are read one row group at a time.

    Args:
        on_invalid: given, a row that misses a required field is passed to it as ``{id, video_id,
            reason}`` and left out instead of raising (GRPO records such rows and goes on).
    """
    root = videos_root or uri.rstrip("/").rsplit("/", 1)[0]
    pruned = read_pruned_ids(pruned_ids) if pruned_ids else None
    for n, r in enumerate(_iter_records(uri)):
        if split is not None and r.get("split") not in (None, split):
            continue
        missing = [k for k in ("dataset", "scene_name", "question_type", "question", "ground_truth") if r.get(k) is None]
        if missing:
            reason = f"misses {', '.join(missing)}"
            if on_invalid is None:
                raise ValueError(f"{uri}: row {r.get('id', n)} {reason}")
            video_id = f"{r['dataset']}/{r['scene_name']}" if r.get("dataset") and r.get("scene_name") else None
            on_invalid({"id": str(r.get("id", n)), "video_id": video_id, "reason": reason})
            continue
        video = r.get("video") or r.get("video_path")
        if not video:
            video = storage.join(root, r["dataset"], f"{r['scene_name']}.mp4")
        elif "://" not in video and not video.startswith("/"):
            video = storage.join(root, video)
        yield BenchmarkRow(
            id=str(r.get("id", n)),
            dataset=str(r["dataset"]),
            scene_name=str(r["scene_name"]),
            question_type=str(r["question_type"]),
            question=str(r["question"]),
            options=tuple(r.get("options") or ()),
            ground_truth=str(r["ground_truth"]),
            mc_answer=r.get("mc_answer") or None,
            video=video,
            frame_indices=tuple(int(i) for i in (r.get("frame_indices") or ())),
            pruned=(str(r.get("id", n)) in pruned) if pruned is not None
            else (None if r.get("pruned") is None else bool(r["pruned"])),
        )


def read_benchmark(
    uri: str, videos_root: str | None = None, split: str | None = None, pruned_ids: str | None = None
) -> list[BenchmarkRow]:
    """Reads benchmark rows from a parquet file or folder, a JSON list or JSON lines.

    Args:
        uri: the benchmark file, or a folder of parquet files (a split of a generated data set:
            ``qa/benchmark/<split>``; all of ``qa/benchmark`` holds every split).
        videos_root: where ``{dataset}/{scene_name}.mp4`` (VSI-Bench) or ``video_path``
            (VSTI-Bench) is resolved; defaults to the folder of ``uri``. Rows that carry an
            absolute ``video`` URI (our generated ones) keep it.
        split: keep only rows of this split (rows without a split are kept).
        pruned_ids: VSI-Bench-Debiased's ``pruned_ids.txt``: marks the rows it names as pruned
            (else a row's own ``pruned`` column, as in ``test_debiased.parquet`` /
            ``test_pruned.parquet``, else unknown).

    Raises:
        ValueError: a row misses a required field; the message names the row and the field.
    """
    return list(iter_benchmark(uri, videos_root, split, pruned_ids))


def score_predictions(rows: Sequence[BenchmarkRow], outputs: dict[str, str]) -> list[dict]:
    """One record per row with the raw output, parsed answers and both scores.

    A row without an output (its inference failed) scores 0 and carries ``error``.
    """
    records = []
    for row in rows:
        raw = outputs.get(row.id)
        if is_numeric_question(row.question_type):
            lenient = lenient_parse_number(raw or "", row.question_type)
        else:
            lenient = lenient_parse_choice(raw or "", row.options)
        records.append(
            {
                **asdict(row),
                "options": list(row.options),
                "frame_indices": list(row.frame_indices),
                "prediction": raw,
                "parsed_official": official_parse(raw) if raw is not None else None,
                "parsed_lenient": lenient,
                "score_official": score_official(row.question_type, raw, row.ground_truth, row.mc_answer) if raw is not None else 0.0,
                "score_lenient": score_lenient(row.question_type, raw, row.ground_truth, row.mc_answer, row.options)
                if raw is not None
                else 0.0,
                **({} if raw is not None else {"error": "no output"}),
            }
        )
    return records


def seen_part(row: BenchmarkRow, fraction: float) -> BenchmarkRow:
    """``row`` asked when ``fraction`` of its video has played (online evaluation): the same row at
    1, else one with the id ``<id>@<fraction>`` (its own ledger entry)."""
    return row if fraction == 1.0 else dataclasses.replace(row, id=f"{row.id}@{fraction:g}", seen_fraction=fraction)


def online_curve(by_fraction: dict[float, Sequence[dict]]) -> dict[str, list[dict]]:
    """Score against fraction of the video seen: per benchmark, one point per fraction (ascending)
    with ``fraction``, ``official``, ``lenient`` (overall) and ``tasks`` (official per task)."""
    curve: dict[str, list[dict]] = {}
    for fraction in sorted(by_fraction):
        for name, s in summarize_records(by_fraction[fraction]).items():
            curve.setdefault(name, []).append({
                "fraction": fraction, "official": s.overall_official, "lenient": s.overall_lenient,
                "tasks": {t: official for t, (official, _, _) in s.tasks.items()},
            })  # fmt: skip
    return curve


def online_curve_markdown(curve: dict[str, list[dict]]) -> str:
    """The curve as a markdown table per benchmark (overall official and lenient per fraction)."""
    lines = ["## Online: score by fraction of the video seen", ""]
    for name, points in curve.items():
        lines += [f"**{name}**", "", "| fraction seen | official | lenient |", "|---|---|---|"]
        lines += [f"| {p['fraction']:g} | {p['official']:.1f} | {p['lenient']:.1f} |" for p in points]
        lines.append("")
    return "\n".join(lines)


def online_curve_plot(curve: dict[str, list[dict]], chance: dict[str, ChanceLevels]) -> bytes:
    """PNG: overall official score against fraction seen, a line per benchmark, with its chance levels
    as horizontal lines (random guess dashed, most frequent answer dotted; each where defined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, points in curve.items():
        (line,) = ax.plot([p["fraction"] for p in points], [p["official"] for p in points], marker="o", label=name)
        levels = chance.get(name)
        for value, style, label in (() if levels is None else (
            (levels.chance_overall, "--", "chance (random)"), (levels.frequency_overall, ":", "chance (frequency)"))):  # fmt: skip
            if value is not None:
                ax.axhline(value, color=line.get_color(), ls=style, lw=1, label=f"{name} {label}")
    ax.set_xlabel("fraction of the video seen")
    ax.set_ylabel("overall score (official)")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 100)
    ax.set_title("online evaluation: score against video seen")
    ax.legend(fontsize=8)
    data = _png(fig)
    plt.close(fig)
    return data


DEBIASED_SUFFIX = "-debiased"


def _debiased(records: Sequence[dict]) -> list[dict] | None:
    """The records VSI-Bench-Debiased keeps, when the rows say which were pruned and some were."""
    flags = [r.get("pruned") for r in records]
    if None in flags or not any(flags) or all(flags):
        return None
    return [r for r in records if not r["pruned"]]


def summarize_records(records: Sequence[dict]) -> dict[str, BenchmarkSummary]:
    """Per benchmark; with pruning information also ``<benchmark>-debiased`` over the kept rows."""
    out = summarize(ScoredRow(r["question_type"], r["score_official"], r["score_lenient"]) for r in records)
    kept = _debiased(records)
    if kept:
        for name, s in summarize(ScoredRow(r["question_type"], r["score_official"], r["score_lenient"]) for r in kept).items():
            out[name + DEBIASED_SUFFIX] = dataclasses.replace(s, benchmark=name + DEBIASED_SUFFIX)
    return out


def chance_levels_of(records: Sequence[dict]) -> dict[str, ChanceLevels]:
    """VSI-Bench's chance rows for the benchmarks of ``records`` (and their debiased subsets)."""

    def levels(rs: Sequence[dict]) -> dict[str, ChanceLevels]:
        return chance_levels((r["question_type"], r["options"], r["ground_truth"], r["mc_answer"]) for r in rs)

    out = levels(records)
    kept = _debiased(records)
    if kept:
        for name, c in levels(kept).items():
            out[name + DEBIASED_SUFFIX] = dataclasses.replace(c, benchmark=name + DEBIASED_SUFFIX)
    return out


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def task_plot(task: str, records: Sequence[dict]) -> bytes:
    """PNG for one task: letter confusion counts (multiple choice) or predicted vs true values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4))
    official = 100 * float(np.mean([r["score_official"] for r in records]))
    if is_numeric_question(records[0]["question_type"]):
        truth = [float(r["ground_truth"]) for r in records]
        pred = [r["parsed_lenient"] if r["parsed_lenient"] is not None else np.nan for r in records]
        ax.scatter(truth, pred, s=14, alpha=0.7)
        finite = [v for v in truth + pred if v is not None and np.isfinite(v)]
        lo, hi = (min(finite), max(finite)) if finite else (0, 1)
        ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--")
        ax.set_xlabel("ground truth")
        ax.set_ylabel("prediction (lenient parse)")
    else:
        option_letters = {o.split(".", 1)[0].strip() for r in records for o in r["options"]}
        letters = sorted(option_letters | {r["mc_answer"] or r["ground_truth"] for r in records}) + ["?"]
        truth_counts = [sum((r["mc_answer"] or r["ground_truth"]) == ch for r in records) for ch in letters]
        pred_counts = [sum((r["parsed_lenient"] or "?") == ch for r in records) for ch in letters]
        x = np.arange(len(letters))
        ax.bar(x - 0.2, truth_counts, 0.4, label="true answer")
        ax.bar(x + 0.2, pred_counts, 0.4, label="predicted")
        ax.set_xticks(x, letters)
        ax.set_ylabel("questions")
        ax.legend()
    ax.set_title(f"{task}: {official:.1f} official (n={len(records)})")
    data = _png(fig)
    plt.close(fig)
    return data


def overview_plot(
    summary: BenchmarkSummary, baseline: BenchmarkSummary | None = None, chance: ChanceLevels | None = None
) -> bytes:
    """PNG with one bar per task (official and lenient; the baseline's official when given) and a
    marker per chance level (random guess, most frequent answer) when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary.tasks) + ["overall"]
    official = [summary.tasks[t][0] for t in summary.tasks] + [summary.overall_official]
    lenient = [summary.tasks[t][1] for t in summary.tasks] + [summary.overall_lenient]
    x = np.arange(len(tasks))
    width = 0.28 if baseline else 0.4
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(tasks)), 4))
    ax.bar(x - width / 2 if not baseline else x - width, official, width, label="official")
    ax.bar(x + width / 2 if not baseline else x, lenient, width, label="lenient")
    if baseline:
        base = [baseline.tasks.get(t, (np.nan,))[0] for t in summary.tasks] + [baseline.overall_official]
        ax.bar(x + width, base, width, label="baseline (official)")
    if chance:
        for values, overall, marker, label in (
            (chance.chance, chance.chance_overall, "_", "chance (random)"),
            (chance.frequency, chance.frequency_overall, "x", "chance (frequency)"),
        ):
            ys = [values.get(t) for t in summary.tasks] + [overall]
            ax.scatter(x, [np.nan if y is None else y for y in ys], marker=marker, color="black", s=120,
                       zorder=3, label=label)  # fmt: skip
    ax.set_xticks(x, tasks, rotation=40, ha="right")
    ax.set_ylabel("score")
    ax.set_ylim(0, 100)
    ax.set_title(summary.benchmark)
    ax.legend()
    data = _png(fig)
    plt.close(fig)
    return data


def write_report(
    out: str,
    records: Sequence[dict],
    title: str = "",
    baseline: dict[str, BenchmarkSummary] | None = None,
    run: dict | None = None,
    curve: dict[str, list[dict]] | None = None,
) -> dict[str, BenchmarkSummary]:
    """Writes predictions, summary (JSON + markdown), report.html and plots under ``out``; returns the summary.

    ``summary.json`` holds ``title``, ``num_questions``, ``benchmarks`` (per benchmark: overall and
    per task, official and lenient, with counts), ``chance_levels`` (per benchmark, see
    :func:`vlm3r_core.metrics.chance_levels`), ``run`` (the settings of the run, when given) and,
    for an online run asked at fractions of the videos, ``online_curve`` (:func:`online_curve`;
    also ``plots/online_curve.png`` and a table in ``summary.md``).
    """
    summaries = summarize_records(records)
    chance = chance_levels_of(records)
    storage.write_jsonl(storage.join(out, "predictions.jsonl"), records)
    storage.write_json(
        storage.join(out, "summary.json"),
        {"title": title, "num_questions": len(records), "benchmarks": {k: s.to_dict() for k, s in summaries.items()},
         "chance_levels": {k: c.to_dict() for k, c in chance.items()}, "run": run or {},
         **({"online_curve": curve} if curve else {})},  # fmt: skip
    )
    markdown = summary_markdown(summaries, title, baseline, chance)
    if curve:
        markdown = f"{markdown.rstrip()}\n\n{online_curve_markdown(curve)}"
        storage.write_bytes(storage.join(out, "plots", "online_curve.png"), online_curve_plot(curve, chance))
    storage.write_text(storage.join(out, "summary.md"), markdown)
    write_html_report(out, records, summaries, title, baseline)
    by_task: dict[str, list[dict]] = {}
    for r in records:
        by_task.setdefault(r["question_type"], []).append(r)
    for task, task_records in sorted(by_task.items()):
        storage.write_bytes(storage.join(out, "plots", f"{task}.png"), task_plot(task, task_records))
    for name, summary in summaries.items():
        storage.write_bytes(
            storage.join(out, "plots", f"overview_{name}.png"),
            overview_plot(summary, (baseline or {}).get(name), chance.get(name)),
        )
    return summaries


def read_summary(uri: str) -> dict[str, BenchmarkSummary]:
    """Reads a ``summary.json`` written by :func:`write_report`."""
    data = storage.read_json(uri)
    out = {}
    for name, s in data["benchmarks"].items():
        out[name] = BenchmarkSummary(
            benchmark=name,
            tasks={t: (v["official"], v["lenient"], v["count"]) for t, v in s["tasks"].items()},
            overall_official=s["overall"]["official"],
            overall_lenient=s["overall"]["lenient"],
        )
    return out

