"""Exported benchmarks: the lmms-eval task folder scores a prediction file exactly as our scorer does, and
the VLMEvalKit-style TSV holds every question. The exported utils.py is imported as lmms-eval would import
it (no lmms-eval install needed: its task functions are plain functions of a doc and the results)."""

from __future__ import annotations

import csv
import importlib.util
import io

import pyarrow.parquet as pq
import pytest
import yaml

from vlm3r_core import storage
from vlm3r_core.evaluation import read_benchmark, score_predictions, summarize_records
from vlm3r_core.harnesses import main
from vlm3r_core.prompting import format_question

ROWS = [
    ("c0", "object_counting", "How many chair(s) are in this room?", [], "4", None),
    ("c1", "object_counting", "How many bed(s) are in this room?", [], "2", None),
    ("d0", "object_abs_distance", "How far apart are the bed and the door (in meters)?", [], "2.0", None),
    ("e0", "object_rel_direction_easy", "Left or right?", ["A. left", "B. right"], "B", None),
    ("e1", "object_rel_direction_easy", "Left or right?", ["A. left", "B. right"], "A", None),
    ("h0", "object_rel_direction_hard", "Quadrant?", ["A. front-left", "B. front-right", "C. back-left", "D. back-right"], "C", None),
    ("r0", "object_rel_distance", "Which is closest to the bed?", ["A. chair", "B. lamp", "C. sofa", "D. tv"], "lamp", "B"),
    ("s0", "camera_displacement", "How far did the camera move between frame 3 and frame 9 of 32?", [], "1.5", None),
    ("s1", "camera_displacement", "How far did the camera move between frame 1 and frame 5 of 32?", [], "0", None),
    ("m0", "camera_movement_direction", "Which way did the camera move?", ["A. Forward", "B. Left", "C. Right"], "Left", "B"),
    ("p0", "obj_obj_relative_pos_nf", "Is the chair near or far compared to the lamp?", ["A. Near", "B. Far"], "Far", "B"),
]  # fmt: skip
PREDICTIONS = {
    "c0": " 4", "c1": "3 chairs", "d0": "2.4 meters", "e0": "B.", "e1": " C.\n", "h0": "The answer is C",
    "r0": "b", "s0": "\t1.2", "s1": "0", "m0": "B. Left", "p0": "",
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    rows = [{"id": i, "dataset": "synthetic", "scene_name": f"syn-{n % 3}", "question_type": t, "question": q,
             "options": o, "ground_truth": gt, "mc_answer": mc, "video": str(root / f"syn-{n % 3}.mp4")}
            for n, (i, t, q, o, gt, mc) in enumerate(ROWS)]  # fmt: skip
    benchmark = str(root / "bench.jsonl")
    storage.write_jsonl(benchmark, rows)
    out = root / "out"
    assert main(["--benchmark", benchmark, "--out", str(out), "--name", "synthetic_spatial"]) == 0
    folder = out / "lmms_eval" / "synthetic_spatial"
    spec = importlib.util.spec_from_file_location("exported_utils", folder / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    return benchmark, out, folder, utils


def _task_yaml(path):
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))
    return yaml.load(path.read_text(), Loader=Loader)  # noqa: S506 (a SafeLoader subclass)


def test_the_exported_lmms_eval_task_scores_a_prediction_file_like_our_scorer(exported):
    benchmark, _, folder, utils = exported
    rows = read_benchmark(benchmark)
    records = {r["id"]: r for r in score_predictions(rows, PREDICTIONS)}
    ours = summarize_records(list(records.values()))
    docs = pq.read_table(folder / "test.parquet").to_pylist()  # what lmms-eval's datasets loader hands the task
    assert [d["id"] for d in docs] == [r.id for r in rows]
    by_benchmark: dict[str, list] = {}
    for doc, row in zip(docs, rows, strict=True):
        assert utils.doc_to_visual(doc) == [row.video]
        assert utils.doc_to_text(doc, {"pre_prompt": "", "mca_post_prompt": "", "na_post_prompt": ""}) == (
            format_question(row.question, row.options))
        bench = utils.benchmark_of(doc["question_type"])
        (result,) = getattr(utils, f"process_results_{bench}")(doc, [PREDICTIONS[doc["id"]]]).values()
        assert result["score"] == records[doc["id"]]["score_official"], doc["id"]
        by_benchmark.setdefault(bench, []).append(result)
    assert set(by_benchmark) == {"vsibench", "vstibench"}
    for bench, results in by_benchmark.items():
        assert getattr(utils, f"aggregate_{bench}")(results) == ours[bench].overall_official
        assert utils.task_scores(results, bench) == {t: v[0] for t, v in ours[bench].tasks.items()}
    # The edge cases agree too: " C.\n" is stripped, a ground truth of 0 scores 0, "" scores 0.
    assert (records["e1"]["score_official"], records["s1"]["score_official"], records["p0"]["score_official"]) == (
        0.0, 0.0, 0.0)
    assert records["c0"]["score_official"] == 1.0 and records["r0"]["score_official"] == 1.0


def test_the_task_yaml_follows_the_official_vsibench_task(exported):
    _, _, folder, utils = exported
    assert sorted(p.name for p in folder.iterdir()) == [
        "synthetic_spatial_vsibench.yaml", "synthetic_spatial_vstibench.yaml", "test.parquet", "utils.py"]
    for bench in ("vsibench", "vstibench"):
        task = _task_yaml(folder / f"synthetic_spatial_{bench}.yaml")
        assert task["task"] == f"synthetic_spatial_{bench}" and task["output_type"] == "generate_until"
        assert task["dataset_path"] == "parquet"
        assert task["dataset_kwargs"]["data_files"]["test"] == str(folder / "test.parquet")
        assert task["generation_kwargs"] == {"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1,
                                             "do_sample": False}  # fmt: skip
        (metric,) = task["metric_list"]
        assert metric["metric"] == f"{bench}_score"
        for key in ("process_docs", "doc_to_visual", "doc_to_text", "process_results"):
            kind, name = task[key]
            assert kind == "function" and callable(getattr(utils, name.split(".", 1)[1]))
        assert callable(getattr(utils, metric["aggregation"][1].split(".", 1)[1]))


def test_the_vlmevalkit_tsv_holds_every_question(exported):
    benchmark, out, _, _ = exported
    table = list(csv.DictReader(io.StringIO((out / "synthetic_spatial.tsv").read_text()), delimiter="\t"))
    assert [r["id"] for r in table] == [r[0] for r in ROWS]
    assert list(table[0])[:7] == ["index", "id", "video", "video_path", "dataset", "scene_name", "question"]
    by_id = {r["id"]: r for r in table}
    assert (by_id["r0"]["answer"], by_id["r0"]["B"], by_id["r0"]["category"]) == ("B", "lamp", "object_rel_distance")
    assert (by_id["c0"]["answer"], by_id["c0"]["A"]) == ("4", "")
    assert by_id["h0"]["prompt"] == format_question(ROWS[5][2], ROWS[5][3])
    assert int(by_id["p0"]["index"]) == len(ROWS) - 1
