"""Benchmark reading (ours and the official layouts), scoring records and reports."""

import json

import pyarrow as pa
import pytest

from vlm3r_core import storage
from vlm3r_core.evaluation import read_benchmark, read_summary, score_predictions, write_report

ROWS = [
    {"id": 0, "dataset": "scannet", "scene_name": "scene0001_00", "question_type": "object_counting",
     "question": "How many chair(s) are in this room?", "options": None, "ground_truth": "4"},
    {"id": 1, "dataset": "scannet", "scene_name": "scene0001_00", "question_type": "object_abs_distance",
     "question": "Distance?", "options": None, "ground_truth": "2.0"},
    {"id": 2, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_rel_direction_easy",
     "question": "Left or right?", "options": ["A. left", "B. right"], "ground_truth": "B"},
    {"id": 3, "dataset": "arkitscenes", "scene_name": "41069025", "question_type": "object_rel_direction_hard",
     "question": "Quadrant?", "options": ["A. front-left", "B. front-right", "C. back-left", "D. back-right"], "ground_truth": "C"},
]


def test_reads_the_official_vsibench_parquet_and_resolves_videos(tmp_path):
    storage.write_parquet(str(tmp_path / "test-00000-of-00001.parquet"), pa.Table.from_pylist(ROWS))
    rows = read_benchmark(str(tmp_path / "test-00000-of-00001.parquet"))
    assert [r.id for r in rows] == ["0", "1", "2", "3"]
    assert rows[0].video == f"{tmp_path}/scannet/scene0001_00.mp4"
    assert rows[2].options == ("A. left", "B. right") and rows[0].options == ()
    assert rows[2].video_id == "arkitscenes/41069025"
    vsti = [{"id": 9, "dataset": "scannet", "scene_name": "s1", "video_path": "scannet/s1.mp4", "question_type": "camera_displacement",
             "question": "How far?", "ground_truth": "1.5", "mc_answer": None, "frame_indices": [3, 90]}]
    (tmp_path / "vsti.json").write_text(json.dumps(vsti))
    row = read_benchmark(str(tmp_path / "vsti.json"), videos_root="s3://bucket/vsti")[0]
    assert row.video == "s3://bucket/vsti/scannet/s1.mp4" and row.frame_indices == (3, 90)


def test_missing_fields_name_the_row(tmp_path):
    (tmp_path / "b.jsonl").write_text(json.dumps({"id": 7, "dataset": "x", "scene_name": "y", "question": "q"}) + "\n")
    with pytest.raises(ValueError, match="row 7 misses question_type, ground_truth"):
        read_benchmark(str(tmp_path / "b.jsonl"))


def test_echoing_the_ground_truth_scores_100_and_a_known_wrong_answer_scores_as_official(tmp_path):
    storage.write_jsonl(str(tmp_path / "b.jsonl"), ROWS)
    rows = read_benchmark(str(tmp_path / "b.jsonl"))
    perfect = score_predictions(rows, {r.id: r.ground_truth for r in rows})
    summary = write_report(str(tmp_path / "perfect"), perfect, title="echo")
    assert summary["vsibench"].overall_official == 100.0
    assert all(t[0] == 100.0 for t in summary["vsibench"].tasks.values())

    # distance 2.4 for 2.0: relative error 0.2 -> thresholds 0.50..0.80 pass -> 0.7;
    # "The answer is C" scores 0 officially (first token "The") but 1 leniently.
    wrong = {"0": "3", "1": "2.4 meters", "2": "B.", "3": "The answer is C"}
    records = score_predictions(rows, {r.id: wrong[r.id] for r in rows})
    by_id = {r["id"]: r for r in records}
    assert by_id["0"]["score_official"] == pytest.approx(0.6)  # |3-4|/4 = 0.25 -> 6 of 10
    assert by_id["1"]["score_official"] == pytest.approx(0.7)
    assert by_id["3"]["score_official"] == 0.0 and by_id["3"]["score_lenient"] == 1.0
    out = str(tmp_path / "wrong")
    summary = write_report(out, records, title="wrong")
    tasks = summary["vsibench"].tasks
    assert tasks["object_rel_direction"][0] == pytest.approx(50.0)  # mean of easy (100) and hard (0)
    assert summary["vsibench"].overall_official == pytest.approx((60 + 70 + 50) / 3)
    assert read_summary(out + "/summary.json")["vsibench"].overall_official == pytest.approx((60 + 70 + 50) / 3)
    written = sorted(p.rsplit("/", 1)[1] for p in storage.list_files(out))
    assert written == [
        "object_abs_distance.png", "object_counting.png", "object_rel_direction_easy.png",
        "object_rel_direction_hard.png", "overview_vsibench.png", "predictions.jsonl", "report.html", "summary.json", "summary.md",
    ]
    assert "| **overall** |" in (tmp_path / "wrong" / "summary.md").read_text()


def test_vsibench_debiased_is_reported_beside_the_full_set_with_the_chance_levels(tmp_path):
    # VSI-Bench-Debiased: the full test set plus pruned_ids.txt (ids that Iterative Bias Pruning removed).
    storage.write_jsonl(str(tmp_path / "test.jsonl"), ROWS)
    (tmp_path / "pruned_ids.txt").write_text("0\n3\n")
    rows = read_benchmark(str(tmp_path / "test.jsonl"), pruned_ids=str(tmp_path / "pruned_ids.txt"))
    assert [r.pruned for r in rows] == [True, False, False, True]
    answers = {"0": "4", "1": "2.4", "2": " B", "3": "A"}  # " B" is stripped first, as lmms-eval does
    out = str(tmp_path / "eval")
    summary = write_report(out, score_predictions(rows, answers), title="debiased")
    assert summary["vsibench"].overall_official == pytest.approx((100 + 70 + 50) / 3)
    debiased = summary["vsibench-debiased"]  # only questions 1 and 2
    assert set(debiased.tasks) == {"object_abs_distance", "object_rel_direction"}
    assert debiased.overall_official == pytest.approx((70 + 100) / 2)
    written = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(written["benchmarks"]) == {"vsibench", "vsibench-debiased"}
    chance = written["chance_levels"]["vsibench"]["chance"]
    assert chance["tasks"]["object_rel_direction"] == pytest.approx(100 * (1 / 2 + 1 / 4) / 2)
    assert chance["tasks"]["object_counting"] is None and chance["overall"] is None
    assert written["chance_levels"]["vsibench-debiased"]["frequency"]["tasks"]["object_abs_distance"] == 100.0
    table = (tmp_path / "eval" / "summary.md").read_text()
    assert "### vsibench-debiased" in table and "| chance | frequency |" in table
    assert (tmp_path / "eval" / "plots" / "overview_vsibench-debiased.png").stat().st_size > 1000

    # The released debiased/pruned parquet files carry the flag as a column instead.
    storage.write_parquet(str(tmp_path / "flagged.parquet"),
                          pa.Table.from_pylist([dict(r, pruned=r["id"] in (0, 3)) for r in ROWS]))  # fmt: skip
    assert [r.pruned for r in read_benchmark(str(tmp_path / "flagged.parquet"))] == [True, False, False, True]
    assert {r.pruned for r in read_benchmark(str(tmp_path / "test.jsonl"))} == {None}
