"""report.html: written by every evaluation beside summary.md, one self-contained file, drawn by Chromium.

The evaluation is real: a rendered synthetic scene, its generated benchmark questions, fixed model
outputs scored by ``score_predictions`` and written by ``write_report`` (with a baseline run),
plus one question whose video is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from datagen.qa import QAConfig, assign_letters, generate_scene_rows
from datagen.synthetic.world import SyntheticConfig, write_synthetic_scene
from tests.browser import requires_chromium, save_screenshots, start_chromium
from vlm3r_core import storage
from vlm3r_core.evaluation import BenchmarkRow, read_benchmark, read_summary, score_predictions, write_report
from vlm3r_core.metrics import BenchmarkSummary, is_numeric_question
from vlm3r_core.report import chance_levels, example_frames, render_report, task_of
from vlm3r_core.scene import scene_dir

TASKS = (
    "object_counting",
    "object_size_estimation",
    "room_size_estimation",
    "object_rel_distance",
    "camera_movement_direction",
    "camera_displacement",
)


@dataclass
class Evaluation:
    out: Path
    records: list[dict]
    summaries: dict[str, BenchmarkSummary]
    baseline: dict[str, BenchmarkSummary]


def _model_output(row: BenchmarkRow, k: int) -> str | None:
    """Right, wrong or half right answers, in the forms models write them."""
    if row.video.endswith("missing.mp4"):
        return None  # inference failed: scored 0, "no output"
    if not is_numeric_question(row.question_type):
        target = row.mc_answer or row.ground_truth
        return f"{target}." if k % 2 == 0 else ("A" if target != "A" else "B")
    truth = float(row.ground_truth)
    return [f"{truth:g}", f"{truth * 1.3:.2f}", f"about {truth * 3:.1f}"][k % 3]


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory) -> Evaluation:
    root = tmp_path_factory.mktemp("report")
    cfg = SyntheticConfig(width=160, height=120, fps=8, duration_s=3)
    scene = write_synthetic_scene(str(root), "syn-000000", 0, cfg, split="val")
    video = scene.video_uri(scene_dir(str(root), "synthetic", "syn-000000"))
    qa = QAConfig(tasks=TASKS, default_cap=2, route_planner="builtin")
    rows = assign_letters(generate_scene_rows(scene, video, qa), seed=0)
    missing = {**[r for r in rows if r["question_type"] == "room_size_estimation"][0]}
    rows.append({**missing, "id": "synthetic/gone/room_size_estimation/0000", "video": str(root / "missing.mp4")})
    storage.write_jsonl(str(root / "val.jsonl"), rows)
    bench = read_benchmark(str(root / "val.jsonl"))

    write_report(str(root / "baseline"), score_predictions(bench, {r.id: "A" for r in bench}), "always A")
    baseline = read_summary(str(root / "baseline" / "summary.json"))
    records = score_predictions(bench, {r.id: _model_output(r, k) for k, r in enumerate(bench)})
    summaries = write_report(str(root / "run"), records, "tiny model", baseline)
    return Evaluation(root / "run", records, summaries, baseline)


def test_every_evaluation_writes_a_self_contained_report(evaluation):
    page = (evaluation.out / "report.html").read_text()
    assert (evaluation.out / "summary.md").exists()
    assert "<script" not in page and "<link" not in page  # no JS, no external stylesheet
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page), "the report must not load anything"
    images = re.findall(r'<img class="frame" src="([^"]+)"', page)
    assert images and all(src.startswith("data:image/jpeg;base64,") for src in images)
    assert page.count("frames unavailable") == 1 and "missing.mp4" in page
    assert "tiny model" in page and "always A" not in page


def test_each_question_gets_its_frames_or_the_reason_it_has_none(evaluation):
    video = next(r["video"] for r in evaluation.records if r["frame_indices"])
    records = [
        {"id": "named", "video": video, "frame_indices": [2, 9]},
        {"id": "sampled", "video": video, "frame_indices": []},
        {"id": "past the end", "video": video, "frame_indices": [3, 240]},
        {"id": "not a video", "video": str(evaluation.out / "summary.md"), "frame_indices": []},
    ]
    frames = example_frames(records)
    assert [label for label, _ in frames["named"]] == ["frame 2 (0.2 s)", "frame 9 (1.1 s)"]
    assert [label.split()[1] for label, _ in frames["sampled"]] == ["0", "7", "15", "23"]  # linspace(0, 23, 4)
    assert frames["past the end"] == "frames [240] are outside the video (24 frames)"
    assert "summary.md" in frames["not a video"]


def test_chance_is_one_over_the_options_aggregated_like_the_scores(evaluation):
    chance = chance_levels(evaluation.records)
    assert chance["vsibench"] == pytest.approx(
        {"object_rel_distance": 25.0, "object_rel_distance_v2": 100 / 3, "object_rel_distance_v3": 50.0}
    )
    assert chance["vstibench"] == pytest.approx(
        {"camera_movement_direction": 25.0, "camera_movement_direction_v2": 100 / 3, "camera_movement_direction_v3": 50.0}
    )
    # A chance level given in the summary (numeric tasks get theirs from elsewhere) is drawn too.
    summary = evaluation.summaries["vsibench"].to_dict()
    summary["tasks"]["object_counting"]["chance"] = 12.5
    page = render_report(evaluation.records, {"vsibench": summary}, frames_of=lambda records: {})
    assert re.search(r'<line class="chance" data-task="object_counting"[^>]*><title>object_counting, chance: 12\.5', page)


@requires_chromium
def test_report_renders_charts_and_gallery_in_chromium(evaluation, tmp_path, screenshots_dir):
    driver = start_chromium(1280, 1500)
    try:
        driver.get((evaluation.out / "report.html").as_uri())
        for name, summary in evaluation.summaries.items():
            bars = driver.execute_script(
                "return [...document.querySelectorAll(`#bench-${arguments[0]} rect.bar`)]"
                ".map(b => [b.dataset.task, b.classList[1], +b.dataset.value, b.getBBox().height])",
                name,
            )
            groups = [*summary.tasks, "overall"]
            assert len(bars) == 3 * len(groups)  # official, lenient and baseline per task and overall
            official = {task: value for task, kind, value, _ in bars if kind == "bar-official"}
            want = {**{t: v[0] for t, v in summary.tasks.items()}, "overall": summary.overall_official}
            assert official == pytest.approx(want, abs=0.01)
            assert all(h >= 1 for *_, h in bars)  # drawn, not just present (a score of 0 is a 1 px sliver)
            lines = driver.execute_script(
                "return [...document.querySelectorAll(`#bench-${arguments[0]} line.chance`)].map(l => l.dataset.task)",
                name,
            )
            assert sorted(lines) == sorted(chance_levels(evaluation.records)[name])

        gallery = driver.execute_script(
            "return [...document.querySelectorAll('section.task')].map(s => [s.dataset.task,"
            " [...s.querySelectorAll('article')].map(a => [a.dataset.id, a.className,"
            "   [...a.querySelectorAll('img.frame')].map(i => [i.complete && i.naturalWidth, i.alt]),"
            "   a.innerText.includes('frames unavailable')])])"
        )
        scores = {
            (t, b): v[0] for b, s in evaluation.summaries.items() for t, v in s.tasks.items()
        }
        order = [next(v for (t, _), v in scores.items() if t == task) for task, _ in gallery]
        assert order == sorted(order), "worst task first"
        records = {r["id"]: r for r in evaluation.records}
        assert {task for task, _ in gallery} == {task_of(r["question_type"]) for r in records.values()}
        for _, examples in gallery:
            assert 1 <= len(examples) <= 4
            for example_id, css, images, unavailable in examples:
                record = records[example_id]
                verdict = "right" if record["score_official"] == 1 else "wrong" if record["score_official"] == 0 else "partial"
                assert css == f"example {verdict}"
                if record["video"].endswith("missing.mp4"):
                    assert unavailable and not images
                    continue
                assert images and all(width > 0 for width, _ in images), f"{example_id}: frames did not load"
                named = record["frame_indices"]
                shown = [int(alt.split()[1]) for _, alt in images]
                assert shown == (named if named else [0, 7, 15, 23])  # the named frames, else 4 sampled of 24
        save_screenshots(driver, tmp_path, "report.png", screenshots_dir)
    finally:
        driver.quit()
