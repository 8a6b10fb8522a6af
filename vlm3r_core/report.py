"""``report.html``: one self-contained page per evaluation run, readable without a server.

Written by :func:`vlm3r_core.evaluation.write_report` beside ``summary.md``; regenerate it for an
earlier run with ``python -m vlm3r_core.report <eval folder> [--baseline other/summary.json]``.

What it shows, per benchmark (VSI-Bench, VSTI-Bench):

- a bar chart (inline SVG, no script) of every task and the overall score: official, lenient and,
  when given, the baseline run's official score; a dashed line marks the chance level of a task
  where it is known;
- the same numbers as a table, with the difference to the baseline;
- a gallery of example questions, worst task first: up to :data:`MAX_EXAMPLES_PER_TASK` questions
  per task (its lowest and its highest scores), each with up to :data:`MAX_FRAMES_PER_EXAMPLE`
  frames of its video (the frames the question names, else frames sampled with the one sampler of
  :mod:`vlm3r_core.video`) as JPEG thumbnails embedded as ``data:`` URLs, the question, options,
  model answer and ground truth, marked right, partly right (numeric answers) or wrong. A video
  that cannot be read shows "frames unavailable" and the reason; the report is still written.

Chance levels: a multiple-choice question answered uniformly at random scores ``1 / options``;
a task's chance is that, aggregated with the official rules (:func:`chance_levels`). A ``chance``
value in a task's entry of the summary dict (``BenchmarkSummary.to_dict()["tasks"][task]``) wins
over the computed one; that is how numeric tasks get one (frequency baselines computed elsewhere).
"""

from __future__ import annotations

import base64
import html
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from vlm3r_core import storage
from vlm3r_core.cli import run_job
from vlm3r_core.metrics import (
    REL_DIRECTION_LEVELS,
    BenchmarkSummary,
    ScoredRow,
    benchmark_of,
    is_numeric_question,
    summarize,
)
from vlm3r_core.video import VideoDecodeError, count_frames, jpeg_thumbnail, read_frames, sample_frame_indices

REPORT_FILE = "report.html"
MAX_EXAMPLES_PER_TASK = 4
MAX_FRAMES_PER_EXAMPLE = 4
THUMBNAIL_SIDE = 160  # pixels, the longer side of a frame thumbnail

SERIES = (  # (key, legend, colour)
    ("official", "official", "#2b6cb0"),
    ("lenient", "lenient", "#90cdf4"),
    ("baseline", "baseline (official)", "#a0aec0"),
)

# A frame thumbnail: (label, data URL). A ``FrameSource`` maps the gallery's records to their
# thumbnails by record id, or to the reason they have none (shown as "frames unavailable").
Thumbnails = list[tuple[str, str]]
FrameSource = Callable[[Sequence[dict]], Mapping[str, Thumbnails | str]]


# ----------------------------------------------------------------------------------------------
# Numbers


def task_of(question_type: str) -> str:
    """The summary task of a question type (VSI-Bench merges the three relative-direction levels)."""
    return "object_rel_direction" if question_type in REL_DIRECTION_LEVELS else question_type


def chance_levels(records: Sequence[dict]) -> dict[str, dict[str, float]]:
    """Per benchmark and task, the expected score (x 100) of picking an option uniformly at random.

    Multiple-choice tasks only (numeric tasks have no option count); aggregated exactly like the
    scores (:func:`vlm3r_core.metrics.summarize`), so merged tasks get the mean of their levels.
    """
    rows = [
        ScoredRow(r["question_type"], 1 / len(r["options"]), 1 / len(r["options"]))
        for r in records
        if not is_numeric_question(r["question_type"]) and r.get("options")
    ]
    return {name: {t: v[0] for t, v in s.tasks.items()} for name, s in summarize(rows).items()}


def _summary_dict(summary: BenchmarkSummary | Mapping) -> Mapping:
    return summary.to_dict() if isinstance(summary, BenchmarkSummary) else summary


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


# ----------------------------------------------------------------------------------------------
# Bar chart (inline SVG)


def bar_chart_svg(
    name: str,
    groups: Sequence[tuple[str, dict[str, float | None], float | None]],
    series: Sequence[str],
) -> str:
    """An SVG bar chart on a 0-100 scale.

    Args:
        name: the chart's accessible name.
        groups: (label, {series key: score or None}, chance or None) per group of bars.
        series: the series keys drawn in each group (keys of :data:`SERIES`), in order.

    Every bar is a ``<rect class="bar bar-<series>">`` (a missing score draws no bar); a chance
    level is a dashed ``<line class="chance">`` across its group.
    """
    colours = {k: c for k, _, c in SERIES}
    legends = {k: label for k, label, _ in SERIES}
    bar_w, gap, top, plot_h = 12, 14, 28, 200
    group_w = bar_w * len(series) + gap
    longest = max((len(label) for label, _, _ in groups), default=0)
    first = len(groups[0][0]) if groups else 0
    # Labels are rotated 40 degrees, about 6 px per character: room on the left and below.
    left = max(40, round(4.8 * first - group_w / 2) + 8)
    bottom = round(3.9 * longest) + 20
    legend_w = sum(22 + 7 * len(legends[k]) for k in series) + 80
    width = max(left + group_w * len(groups) + 10, left + legend_w)
    height = top + plot_h + bottom
    y = lambda v: top + plot_h * (1 - v / 100)  # noqa: E731
    out = [
        f'<svg class="chart" role="img" aria-label="{html.escape(name)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">'
    ]
    for tick in (0, 25, 50, 75, 100):
        out.append(
            f'<line x1="{left}" x2="{width - 10}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" stroke="#e2e8f0"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" class="tick">{tick}</text>'
        )
    for g, (label, values, chance) in enumerate(groups):
        x0 = left + g * group_w + gap / 2
        for s, key in enumerate(series):
            value = values.get(key)
            if value is None or not math.isfinite(value):
                continue
            v = min(max(value, 0.0), 100.0)
            bar_h = max(plot_h * v / 100, 1.0)  # a score of 0 still shows as a sliver
            out.append(
                f'<rect class="bar bar-{key}" data-task="{html.escape(label)}" data-value="{value:.2f}" '
                f'x="{x0 + s * bar_w:.1f}" y="{top + plot_h - bar_h:.1f}" width="{bar_w - 2}" height="{bar_h:.1f}" '
                f'fill="{colours[key]}"><title>{html.escape(label)}, {legends[key]}: {value:.1f}</title></rect>'
            )
        if chance is not None and math.isfinite(chance):
            out.append(
                f'<line class="chance" data-task="{html.escape(label)}" x1="{x0 - 3:.1f}" '
                f'x2="{x0 + bar_w * len(series) + 1:.1f}" y1="{y(chance):.1f}" y2="{y(chance):.1f}" '
                f'stroke="#e53e3e" stroke-width="2" stroke-dasharray="4 3">'
                f"<title>{html.escape(label)}, chance: {chance:.1f}</title></line>"
            )
        cx = x0 + bar_w * len(series) / 2
        weight = ' font-weight="bold"' if label == "overall" else ""
        out.append(
            f'<text class="label" x="{cx:.1f}" y="{top + plot_h + 12}" text-anchor="end"{weight} '
            f'transform="rotate(-40 {cx:.1f} {top + plot_h + 12})">{html.escape(label)}</text>'
        )
    legend_x = left
    for key in series:
        out.append(
            f'<rect x="{legend_x}" y="6" width="12" height="12" fill="{colours[key]}"/>'
            f'<text x="{legend_x + 16}" y="16" class="tick">{legends[key]}</text>'
        )
        legend_x += 22 + 7 * len(legends[key])
    if any(c is not None for _, _, c in groups):
        out.append(
            f'<line x1="{legend_x}" x2="{legend_x + 16}" y1="12" y2="12" stroke="#e53e3e" stroke-width="2" '
            f'stroke-dasharray="4 3"/><text x="{legend_x + 20}" y="16" class="tick">chance</text>'
        )
    out.append("</svg>")
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# Gallery


def _frame_label(index: int, fps: float) -> str:
    return f"frame {index} ({index / fps:.1f} s)"


def _video_thumbnails(video: str, named: Sequence[Sequence[int]]) -> list[Thumbnails | str]:
    """Thumbnails for several questions about one video, decoding it once.

    ``named[k]``: the frames question k names (empty: frames sampled uniformly). Returns per
    question its thumbnails, or the reason it has none. Raises ``VideoDecodeError`` when the video
    cannot be read at all.
    """
    source: str | bytes = storage.read_bytes(video) if storage.is_remote(video) else video  # fetch once
    total = count_frames(source, video)
    uniform = sample_frame_indices(total, MAX_FRAMES_PER_EXAMPLE).tolist()
    picks: list[list[int] | str] = []
    for frames in named:
        frames = list(frames)
        if frames:
            frames = [frames[i] for i in np.linspace(0, len(frames) - 1, min(len(frames), MAX_FRAMES_PER_EXAMPLE), dtype=int)]
        outside = [i for i in frames if not 0 <= i < total]
        picks.append(f"frames {outside} are outside the video ({total} frames)" if outside else frames or uniform)
    wanted = sorted({i for p in picks if not isinstance(p, str) for i in p})
    if not wanted:
        return picks
    decoded = read_frames(source, wanted, video)
    urls = {
        i: "data:image/jpeg;base64," + base64.b64encode(jpeg_thumbnail(frame, THUMBNAIL_SIDE)).decode()
        for i, frame in zip(wanted, decoded.frames, strict=True)
    }
    return [p if isinstance(p, str) else [(_frame_label(i, decoded.fps), urls[i]) for i in p] for p in picks]


def example_frames(records: Sequence[dict], max_workers: int = 4) -> dict[str, Thumbnails | str]:
    """Per record id, thumbnails of the frames its question is about (the frames it names, at
    most :data:`MAX_FRAMES_PER_EXAMPLE` spread over them, else frames sampled uniformly with the
    one sampler), or the reason there are none. Each video is decoded once; videos in parallel."""
    by_video: dict[str, list[dict]] = {}
    for r in records:
        by_video.setdefault(r.get("video") or "", []).append(r)

    def one_video(video: str, rows: list[dict]) -> dict[str, Thumbnails | str]:
        if not video:
            return {str(r["id"]): "the question names no video" for r in rows}
        try:
            results = _video_thumbnails(video, [r.get("frame_indices") or () for r in rows])
        except (VideoDecodeError, OSError, ValueError) as e:
            results = [str(e)] * len(rows)
        return {str(r["id"]): result for r, result in zip(rows, results, strict=True)}

    out: dict[str, Thumbnails | str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(by_video)))) as pool:
        for result in pool.map(lambda item: one_video(*item), by_video.items()):
            out.update(result)
    return out


def pick_examples(records: Sequence[dict], k: int = MAX_EXAMPLES_PER_TASK) -> list[dict]:
    """Up to ``k`` questions of one task: its lowest-scoring half and its highest-scoring half."""
    ordered = sorted(records, key=lambda r: (r["score_official"], str(r["id"])))
    if len(ordered) <= k:
        return ordered
    return ordered[: (k + 1) // 2] + ordered[len(ordered) - k // 2 :]


def _verdict(score: float) -> tuple[str, str]:
    if score >= 1.0:
        return "right", "✓ right"
    if score > 0.0:
        return "partial", f"◐ partly right ({score:.2f})"
    return "wrong", "✗ wrong"


def _example_html(record: dict, thumbnails: Thumbnails | str) -> str:
    if isinstance(thumbnails, str):
        frames = f'<p class="no-frames">frames unavailable ({html.escape(thumbnails)})</p>'
    else:
        frames = "".join(
            f'<figure><img class="frame" src="{url}" alt="{html.escape(label)}"><figcaption>'
            f"{html.escape(label)}</figcaption></figure>"
            for label, url in thumbnails
        )
    css, verdict = _verdict(float(record["score_official"]))
    numeric = is_numeric_question(record["question_type"])
    target = record.get("mc_answer") or record["ground_truth"]
    options = "".join(
        f'<li class="{"truth" if o.split(".", 1)[0].strip() == target else ""}">{html.escape(o)}</li>'
        for o in record.get("options") or ()
    )
    prediction = record.get("prediction")
    answer = html.escape(prediction) if prediction is not None else "<em>no output</em>"
    if record.get("error"):
        answer += f' <span class="muted">({html.escape(str(record["error"]))})</span>'
    parsed = record.get("parsed_lenient")
    parsed_text = ("–" if parsed is None else f"{parsed:g}" if numeric else str(parsed)) if prediction else "–"
    return (
        f'<article class="example {css}" data-id="{html.escape(str(record["id"]))}">'
        f'<div class="frames">{frames}</div>'
        f'<p class="question">{html.escape(record["question"])}</p>'
        + (f'<ol class="options">{options}</ol>' if options else "")
        + f'<dl><dt>model</dt><dd class="answer">{answer}</dd>'
        f"<dt>parsed (lenient)</dt><dd>{html.escape(parsed_text)}</dd>"
        f'<dt>ground truth</dt><dd class="truth">{html.escape(str(record["ground_truth"]))}</dd>'
        f'<dt>score</dt><dd>official {float(record["score_official"]):.2f}, '
        f'lenient {float(record["score_lenient"]):.2f}</dd></dl>'
        f'<p class="verdict">{verdict}</p>'
        f'<p class="muted id">{html.escape(str(record["id"]))} · {html.escape(str(record.get("video", "")))}</p>'
        "</article>"
    )


# ----------------------------------------------------------------------------------------------
# The page


_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1200px; padding: 0 16px; color: #1a202c; }
h1 { margin-bottom: 0; } h2 { margin-top: 36px; border-bottom: 1px solid #e2e8f0; } .muted { color: #718096; }
table { border-collapse: collapse; margin: 12px 0; font-size: 13px; } th, td { padding: 3px 7px; border-bottom: 1px solid #edf2f7; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; } tr.overall td { font-weight: bold; }
.up { color: #2f855a; } .down { color: #c53030; }
.scores { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
svg.chart { display: block; margin: 8px 0; } svg .tick, svg .label { font-size: 11px; fill: #4a5568; }
.task { margin-top: 28px; } .task h3 { margin-bottom: 4px; }
.examples { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 14px; }
.example { border: 1px solid #e2e8f0; border-left: 5px solid #a0aec0; border-radius: 6px; padding: 10px; }
.example.right { border-left-color: #38a169; } .example.wrong { border-left-color: #e53e3e; }
.example.partial { border-left-color: #dd6b20; }
.frames { display: flex; gap: 4px; flex-wrap: wrap; } figure { margin: 0; } figcaption { font-size: 10px; color: #718096; }
img.frame { width: 78px; height: auto; border-radius: 3px; display: block; }
.no-frames { background: #f7fafc; color: #718096; padding: 14px; margin: 0; border-radius: 3px; }
.question { font-weight: 600; } ol.options { margin: 4px 0; padding-left: 18px; list-style: none; }
ol.options li.truth { font-weight: 600; color: #2f855a; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 10px; margin: 6px 0; } dt { color: #718096; }
.verdict { font-weight: 600; margin: 4px 0; } .right .verdict { color: #2f855a; } .wrong .verdict { color: #c53030; }
.partial .verdict { color: #c05621; } .id { font-size: 11px; word-break: break-all; }
"""


def _benchmark_section(
    name: str, summary: Mapping, chance: Mapping[str, float], base: Mapping | None
) -> str:
    tasks = summary["tasks"]
    series = ["official", "lenient"] + (["baseline"] if base else [])

    def chance_of(task: str) -> float | None:
        given = tasks[task].get("chance")
        return float(given) if given is not None else chance.get(task)

    task_chances = {t: chance_of(t) for t in tasks}
    overall = summary["overall"]
    overall_chance = overall.get("chance")
    if overall_chance is None and tasks and all(c is not None for c in task_chances.values()):
        overall_chance = float(np.mean(list(task_chances.values())))
    base_tasks = (base or {}).get("tasks", {})
    groups = [
        (
            t,
            {"official": v["official"], "lenient": v["lenient"], "baseline": base_tasks.get(t, {}).get("official")},
            task_chances[t],
        )
        for t, v in tasks.items()
    ]
    base_overall = (base or {}).get("overall", {})
    groups.append(
        (
            "overall",
            {"official": overall["official"], "lenient": overall["lenient"], "baseline": base_overall.get("official")},
            overall_chance,
        )
    )
    head = '<tr><th>task</th><th class="num">n</th><th class="num">official</th><th class="num">lenient</th>'
    if base:
        head += '<th class="num">baseline<br>official</th><th class="num">baseline<br>lenient</th><th class="num">Δ<br>official</th>'
    head += '<th class="num">chance</th></tr>'
    rows = []
    for t, values, c in groups:
        is_overall = t == "overall"
        src_base = base_overall if is_overall else base_tasks.get(t, {})
        n = "" if is_overall else str(tasks[t]["count"])
        row = (
            f'<tr class="{"overall" if is_overall else "task-row"}"><td>{html.escape(t)}</td><td class="num">{n}</td>'
            f'<td class="num">{_fmt(values["official"])}</td><td class="num">{_fmt(values["lenient"])}</td>'
        )
        if base:
            bo = src_base.get("official")
            delta = values["official"] - bo if bo is not None else None
            trend = "" if delta is None or delta == 0 else ("up" if delta > 0 else "down")
            row += (
                f'<td class="num">{_fmt(bo)}</td><td class="num">{_fmt(src_base.get("lenient"))}</td>'
                f'<td class="num {trend}">{_fmt(delta, signed=True)}</td>'
            )
        rows.append(row + f'<td class="num">{_fmt(c)}</td></tr>')
    return (
        f'<section class="benchmark" id="bench-{html.escape(name)}"><h2>{html.escape(name)}: '
        f"{_fmt(overall['official'])} official, {_fmt(overall['lenient'])} lenient"
        + (f" (baseline {_fmt(base_overall.get('official'))})" if base else "")
        + "</h2>"
        + '<div class="scores">'
        + bar_chart_svg(f"{name} scores per task", groups, series)
        + f"<table>{head}{''.join(rows)}</table></div></section>"
    )


def render_report(
    records: Sequence[dict],
    summaries: Mapping[str, BenchmarkSummary | Mapping],
    title: str = "",
    baseline: Mapping[str, BenchmarkSummary | Mapping] | None = None,
    frames_of: FrameSource = example_frames,
) -> str:
    """The report page as one HTML string (see the module docstring for what it holds).

    Args:
        records: scored prediction records (:func:`vlm3r_core.evaluation.score_predictions`).
        summaries: per benchmark, a ``BenchmarkSummary`` or its ``to_dict()`` form (which may
            carry ``chance`` per task).
        baseline: the comparison run's summaries, same forms.
        frames_of: the gallery's records -> their thumbnails by id (the default decodes the videos).
    """
    chance = chance_levels(records)
    summary_dicts = {name: _summary_dict(s) for name, s in summaries.items()}
    base_dicts = {name: _summary_dict(s) for name, s in (baseline or {}).items()}
    failed = sum(1 for r in records if r.get("error"))
    parts = [
        f"<h1>{html.escape(title or 'Evaluation report')}</h1>",
        f'<p class="muted">{len(records)} questions'
        + (f", {failed} without an answer (scored 0)" if failed else "")
        + f" · written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · scores x 100; official = the benchmark's "
        "exact rule, lenient = a forgiving answer parser</p>",
    ]
    for name, summary in summary_dicts.items():
        parts.append(_benchmark_section(name, summary, chance.get(name, {}), base_dicts.get(name)))

    by_task: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        by_task.setdefault((benchmark_of(r["question_type"]), task_of(r["question_type"])), []).append(r)

    def task_score(key: tuple[str, str]) -> float:
        entry = summary_dicts.get(key[0], {}).get("tasks", {}).get(key[1])
        return entry["official"] if entry else 100 * float(np.mean([r["score_official"] for r in by_task[key]]))

    parts.append(
        f"<h2>Examples, worst task first</h2><p class=\"muted\">Up to {MAX_EXAMPLES_PER_TASK} questions per task "
        "(its lowest and highest scores) with the frames each is about.</p>"
    )
    shown = {key: pick_examples(rows) for key, rows in by_task.items()}
    thumbnails = frames_of([r for rows in shown.values() for r in rows])
    for key in sorted(by_task, key=lambda k: (task_score(k), k)):
        examples = "".join(
            _example_html(r, thumbnails.get(str(r["id"]), "not decoded")) for r in shown[key]
        )
        parts.append(
            f'<section class="task" data-task="{html.escape(key[1])}"><h3>{html.escape(key[1])} '
            f'<span class="muted">({html.escape(key[0])}, {task_score(key):.1f} official, '
            f"n={len(by_task[key])})</span></h3>"
            f'<div class="examples">{examples}</div></section>'
        )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title or 'Evaluation report')}</title><style>{_CSS}</style></head>"
        f"<body>{''.join(parts)}</body></html>\n"
    )


def write_html_report(
    out: str,
    records: Sequence[dict],
    summaries: Mapping[str, BenchmarkSummary | Mapping],
    title: str = "",
    baseline: Mapping[str, BenchmarkSummary | Mapping] | None = None,
) -> str:
    """Writes ``<out>/report.html``; returns its URI."""
    uri = storage.join(out, REPORT_FILE)
    storage.write_text(uri, render_report(records, summaries, title, baseline))
    return uri


@dataclass(frozen=True)
class ReportConfig:
    """Which evaluation folder to (re)write ``report.html`` for.

    Args:
        eval_dir: folder URI written by ``jobs/evaluate.py`` (predictions.jsonl, summary.json).
        baseline: ``summary.json`` of another run, shown beside this one.
    """

    eval_dir: str
    baseline: str | None = None


def rewrite_report(cfg: ReportConfig) -> int:
    summary = storage.read_json(storage.join(cfg.eval_dir, "summary.json"))
    baseline = storage.read_json(cfg.baseline)["benchmarks"] if cfg.baseline else None
    records = storage.read_jsonl(storage.join(cfg.eval_dir, "predictions.jsonl"))
    print(write_html_report(cfg.eval_dir, records, summary["benchmarks"], summary.get("title", ""), baseline))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m vlm3r_core.report --eval-dir <folder> [--baseline summary.json]``: (re)writes report.html."""
    return run_job("report", argv, [ReportConfig], rewrite_report, "Write report.html for an evaluation folder.",
                   prog="python -m vlm3r_core.report")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
