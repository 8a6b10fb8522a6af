"""The scorer against hand-computed official scores."""

import pytest

from vlm3r_core.metrics import (
    ScoredRow,
    benchmark_of,
    chance_levels,
    lenient_parse_choice,
    lenient_parse_number,
    mean_relative_accuracy,
    official_parse,
    score_lenient,
    score_official,
    summarize,
    summary_markdown,
)


@pytest.mark.parametrize(
    "text, parsed",
    [("A. left", "A"), ("A.", "A"), ("3.5 meters", "3.5"), ("The answer is A", "The"), ("about 3.5", "about"),
     ("\n4\n", "4"), (" A", "A"), (" 2.9", "2.9"), ("C.\n", "C"), ("\t B. lamp", "B"), ("", "")],
)
def test_official_parse_takes_first_token(text, parsed):
    assert official_parse(text) == parsed


def test_mean_relative_accuracy_known_values():
    assert mean_relative_accuracy(10, 10) == 1.0
    # relative error 0.1 -> passes thresholds with 1 - θ >= 0.1: θ in 0.50..0.90 -> 9 of 10
    assert mean_relative_accuracy(11, 10) == pytest.approx(0.9)
    # relative error 0.5 -> only θ = 0.50 passes (<= is inclusive)
    assert mean_relative_accuracy(15, 10) == pytest.approx(0.1)
    assert mean_relative_accuracy(16, 10) == 0.0
    assert mean_relative_accuracy(-10, 10) == 0.0


def test_official_scores_for_multiple_choice_and_numbers():
    assert score_official("object_rel_distance", "B", "B") == 1.0
    assert score_official("object_rel_distance", "b.", "B") == 1.0
    assert score_official("object_rel_distance", "B) chair", "B") == 0.0  # "B)" is not "B"
    assert score_official("object_rel_distance", "The answer is B", "B") == 0.0
    # VSTI multiple choice compares with mc_answer
    assert score_official("camera_obj_rel_dist_v1", "C", "table", mc_answer="C") == 1.0
    assert score_official("object_abs_distance", "2.2 meters", "2.0") == pytest.approx(0.9)
    assert score_official("object_abs_distance", "approximately 2", "2.0") == 0.0
    assert score_official("object_counting", "4", "4") == 1.0
    assert score_official("object_counting", "four", "4") == 0.0


def test_lenient_reads_what_official_rejects():
    options = ["A. chair", "B. table", "C. sofa", "D. lamp"]
    assert lenient_parse_choice("B) table", options) == "B"
    assert lenient_parse_choice("(C)", options) == "C"
    assert lenient_parse_choice("The answer is D.", options) == "D"
    assert lenient_parse_choice("sofa", options) == "C"
    assert lenient_parse_choice("no idea", options) is None
    assert score_lenient("object_rel_distance", "B) table", "B", options=options) == 1.0
    # units: 150 cm for a question in metres is 1.5 m
    assert lenient_parse_number("about 150 cm", "object_abs_distance") == pytest.approx(1.5)
    assert lenient_parse_number("1.2 m", "object_size_estimation") == pytest.approx(120.0)
    assert lenient_parse_number("roughly 20 square meters", "room_size_estimation") == pytest.approx(20.0)
    assert score_lenient("object_abs_distance", "approximately 2", "2.0") == 1.0
    assert score_lenient("object_counting", "four", "4") == 0.0


def test_vsibench_summary_merges_relative_direction_levels_before_the_overall_mean():
    rows = [
        ScoredRow("object_counting", 1.0, 1.0),
        ScoredRow("object_counting", 0.0, 1.0),
        ScoredRow("object_rel_direction_easy", 1.0, 1.0),
        ScoredRow("object_rel_direction_medium", 0.0, 0.0),
        ScoredRow("object_rel_direction_medium", 0.0, 0.0),
        ScoredRow("object_rel_direction_hard", 1.0, 1.0),
    ]
    s = summarize(rows)["vsibench"]
    assert s.tasks["object_counting"] == (50.0, 100.0, 2)
    # mean of level means (1 + 0 + 1) / 3, not the sample mean 2 / 4
    assert s.tasks["object_rel_direction"][0] == pytest.approx(200 / 3)
    assert s.overall_official == pytest.approx((50 + 200 / 3) / 2)
    assert "object_rel_direction_easy" not in s.tasks
    assert "| object_counting | 2 | 50.0 | 100.0 |" in summary_markdown({"vsibench": s})


def test_vstibench_summary_keeps_subtypes_separate():
    rows = [
        ScoredRow("camera_obj_rel_dist_v1", 1.0, 1.0),
        ScoredRow("camera_obj_rel_dist_v2", 0.0, 0.0),
        ScoredRow("camera_displacement", 0.5, 0.5),
        ScoredRow("object_counting", 1.0, 1.0),
    ]
    out = summarize(rows)
    assert set(out) == {"vsibench", "vstibench"}
    assert out["vstibench"].overall_official == pytest.approx(100 * (1 + 0 + 0.5) / 3)
    assert out["vsibench"].overall_official == 100.0


def test_markdown_puts_the_baseline_beside_each_task():
    now = summarize([ScoredRow("object_counting", 1.0, 1.0)])
    before = summarize([ScoredRow("object_counting", 0.25, 0.5)])
    table = summary_markdown(now, "trained", baseline=before)
    assert "| task | n | official | lenient | baseline official | baseline lenient |" in table
    assert "| object_counting | 1 | 100.0 | 100.0 | 25.0 | 50.0 |" in table


def test_extended_question_types_are_their_own_benchmark_and_leave_vsi_and_vsti_unchanged():
    official = [
        ScoredRow("object_counting", 1.0, 1.0),
        ScoredRow("object_rel_direction_hard", 0.0, 0.0),
        ScoredRow("camera_displacement", 0.5, 0.5),
    ]
    extended = [
        ScoredRow("object_depth_order", 1.0, 1.0),
        ScoredRow("object_depth_order", 0.0, 1.0),
        ScoredRow("multiview_correspondence", 1.0, 1.0),
        ScoredRow("route_planning_one_turn", 0.0, 0.0),
    ]
    before, after = summarize(official), summarize(official + extended)
    assert set(after) == {"vsibench", "vstibench", "vlm3r-ext"}
    for name in ("vsibench", "vstibench"):
        assert after[name] == before[name]
    ext = after["vlm3r-ext"]
    assert ext.tasks["object_depth_order"] == (50.0, 100.0, 2)
    # mean over the question types present, as VSTI-Bench: (50 + 100 + 0) / 3
    assert ext.overall_official == pytest.approx(50.0)
    # multiple choice: exact letter match with mc_answer, as every official MC type
    assert score_official("perspective_taking_lr", "B.", "B", mc_answer="B") == 1.0
    assert score_official("object_camera_clock", "3", "B", mc_answer="B") == 0.0
    assert benchmark_of("route_planning") == "vsibench" and benchmark_of("route_planning_one_turn") == "vlm3r-ext"
    assert benchmark_of("object_camera_direction") == "vlm3r-ext" and benchmark_of("camera_displacement") == "vstibench"


def test_answers_are_stripped_before_the_official_parse_as_lmms_eval_does():
    # lmms-eval's Task.process_results strips the answer before the task's scorer sees it.
    assert score_official("object_rel_distance", " A", "A") == 1.0
    assert score_official("object_rel_distance", "C.\n", "C") == 1.0
    assert score_official("object_abs_distance", " 2.9", "2.9") == 1.0
    assert score_official("object_counting", "\n 3 chairs", "3") == 1.0


def test_edge_cases_ground_truth_zero_and_missing_mc_answer():
    # The official task divides by the ground truth and would raise; we score 0 whatever the answer.
    assert score_official("camera_displacement", "0", "0") == 0.0
    assert score_official("camera_displacement", "0.3", "0.0") == 0.0
    # No mc_answer: the letter is compared with ground_truth (VSI-Bench rows hold the letter there) ...
    assert score_official("object_rel_distance", "B", "B", mc_answer=None) == 1.0
    # ... so a row whose ground_truth is the option text can only score 0 officially; lenient reads the text.
    assert score_official("object_rel_distance", "B", "table", mc_answer=None) == 0.0
    assert score_lenient("object_rel_distance", "table", "table", None, ["A. chair", "B. table"]) == 0.0
    assert score_lenient("object_rel_distance", "table", "B", None, ["A. chair", "B. table"]) == 1.0


def test_chance_levels_are_the_random_guess_and_the_most_frequent_answer():
    rows = [
        # counting: the most frequent ground truth is 2 (3 of 4); 2 for a 4 scores MRA 0.1 (|2-4|/4 = 0.5)
        ("object_counting", (), "2", None), ("object_counting", (), "2", None),
        ("object_counting", (), "2", None), ("object_counting", (), "4", None),
        # relative direction, easy (2 options): "left" is the most frequent answer text, whatever its letter
        ("object_rel_direction_easy", ("A. left", "B. right"), "A", None),
        ("object_rel_direction_easy", ("A. right", "B. left"), "B", None),
        ("object_rel_direction_easy", ("A. right", "B. left"), "A", None),
        # hard (4 options): no text repeats, so the most frequent letter (C) is the guess
        ("object_rel_direction_hard", ("A. w", "B. x", "C. y", "D. z"), "C", None),
        ("object_rel_direction_hard", ("A. p", "B. q", "C. r", "D. s"), "C", None),
        ("object_rel_direction_hard", ("A. e", "B. f", "C. g", "D. h"), "A", None),
        # VSTI multiple choice: the answer letter is mc_answer
        ("camera_movement_direction", ("A. Forward", "B. Left"), "Forward", "A"),
    ]  # fmt: skip
    levels = chance_levels(rows)
    vsi, vsti = levels["vsibench"], levels["vstibench"]
    assert vsi.frequency["object_counting"] == pytest.approx(100 * (3 + 0.1) / 4)
    assert vsi.chance["object_counting"] is None and vsi.chance_overall is None  # undefined for numbers
    easy, hard = 100 * 2 / 3, 100 * 2 / 3
    assert vsi.frequency["object_rel_direction"] == pytest.approx((easy + hard) / 2)
    assert vsi.chance["object_rel_direction"] == pytest.approx(100 * (1 / 2 + 1 / 4) / 2)
    assert vsi.frequency_overall == pytest.approx((100 * 3.1 / 4 + (easy + hard) / 2) / 2)
    assert vsti.frequency["camera_movement_direction"] == 100.0
    assert vsti.chance_overall == pytest.approx(50.0)
    table = summary_markdown(summarize([ScoredRow("object_counting", 1.0, 1.0)]), chance=levels)
    assert "| task | n | official | lenient | chance | frequency |" in table
    assert "| object_counting | 1 | 100.0 | 100.0 | - | 77.5 |" in table
