"""jobs/evaluate.py against our own Serve app through its OpenAI endpoint, over HTTP on loopback.

The app serves a tiny model saved with ``save_pretrained`` in bf16 (8 frames per video), so serving runs in
the model's dtype from raw video; the job asks it with the
real openai client (``--model openai:http://127.0.0.1:<port>/v1#vlm3r``), sending each video as a base64
``video_url`` and the question with its ``Options:`` lines, which is how our API takes benchmark questions.
The answers must be the ones our model gives in-process on the same videos, and the job writes the usual
predictions, summary (with the chance levels), plots and ledger.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from jobs.evaluate import main
from vlm3r_core import storage
from vlm3r_core.inference import AnswerQuestions
from vlm3r_core.presets import get_preset
from vlm3r_core.video import write_video
from vlm3r_core.vlm import Vlm3rForConditionalGeneration, Vlm3rProcessor

API_KEY = "endpoint-test-key"


@pytest.fixture(scope="module")
def served(serve_port, tmp_path_factory):
    """(base_url, model folder) of a running app; deleted after the module."""
    from ray import serve

    from serve_apps.app import build_app
    from serve_apps.args import Vlm3rArgs

    root = tmp_path_factory.mktemp("endpoint")
    model_dir = str(root / "model")
    config = get_preset("tiny", num_frames=8, dtype="bfloat16")
    Vlm3rForConditionalGeneration.from_config(config).save_pretrained(model_dir, Vlm3rProcessor.from_config(config))
    port = serve_port()
    serve.run(build_app(Vlm3rArgs(model=model_dir, api_keys=(API_KEY,), request_timeout_s=120.0)),
              name="vlm3r-endpoint", route_prefix="/")  # fmt: skip
    yield f"http://127.0.0.1:{port}/v1", model_dir
    serve.delete("vlm3r-endpoint")


def _benchmark(root) -> str:
    rng = np.random.default_rng(0)
    videos = {}
    for name, frames in (("syn-0", 24), ("syn-1", 16)):
        videos[name] = str(root / f"{name}.mp4")
        write_video(videos[name], rng.integers(0, 255, (frames, 48, 64, 3), dtype=np.uint8), fps=8)
    (root / "broken.mp4").write_bytes(b"this is not a video")
    rows = [
        {"id": "q0", "scene_name": "syn-0", "question_type": "object_counting",
         "question": "How many chair(s) are in this room?", "options": [], "ground_truth": "2"},
        {"id": "q1", "scene_name": "syn-0", "question_type": "object_rel_distance",
         "question": "Which of these objects (chair, lamp) is the closest to the bed?",
         "options": ["A. chair", "B. lamp"], "ground_truth": "lamp", "mc_answer": "B"},
        {"id": "q2", "scene_name": "syn-1", "question_type": "camera_movement_direction",
         "question": "Which way did the camera move between frame 1 and frame 8 of 8?",
         "options": ["A. Forward", "B. Left"], "ground_truth": "Left", "mc_answer": "B"},
        {"id": "q3", "scene_name": "syn-1", "question_type": "camera_displacement",
         "question": "Approximately how far (in meters) did the camera move between frame 1 and frame 8 of 8?",
         "options": [], "ground_truth": "1.5"},
        {"id": "q4", "scene_name": "broken", "question_type": "object_counting",
         "question": "How many bed(s) are in this room?", "options": [], "ground_truth": "1"},
    ]  # fmt: skip
    for r in rows:
        r.update(dataset="synthetic", video=str(root / f"{r['scene_name']}.mp4"))
    uri = str(root / "bench.jsonl")
    storage.write_jsonl(uri, rows)
    return uri


def test_the_job_evaluates_our_serve_app_through_its_openai_endpoint(served, tmp_path, monkeypatch, capsys):
    base_url, model_dir = served
    monkeypatch.setenv("VLM3R_TEST_KEY", API_KEY)
    benchmark, out = _benchmark(tmp_path), str(tmp_path / "eval")
    argv = ["--model", f"openai:{base_url}#vlm3r", "--benchmark", benchmark, "--out", out,
            "--endpoint-input", "video", "--endpoint-prompt", "question", "--endpoint-concurrency", "1",
            "--endpoint-api-key-env", "VLM3R_TEST_KEY", "--title", "served tiny"]  # fmt: skip
    assert main(argv) == 0
    predictions = {p["id"]: p for p in storage.read_jsonl(out + "/predictions.jsonl")}
    # The same answers as the model in-process (same sampler, prompt, greedy decoding), one question at a time.
    local = AnswerQuestions(model_dir)
    rows = [dict(r, video_id=f"{r['dataset']}/{r['scene_name']}") for r in storage.read_jsonl(benchmark)]
    for r in rows[:4]:
        assert predictions[r["id"]]["prediction"] == local.answer([r])[0][0], r["id"]
    errors = storage.read_jsonl(out + "/errors.jsonl")
    assert [e["id"] for e in errors] == ["q4"] and "HTTP 415 (unsupported_media_type)" in errors[0]["error"]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert set(summary["benchmarks"]) == {"vsibench", "vstibench"} and summary["num_questions"] == 5
    assert summary["chance_levels"]["vstibench"]["chance"]["tasks"]["camera_movement_direction"] == 50.0
    assert summary["run"]["answerer"] == f"openai:{base_url}#vlm3r"
    plots = sorted(p.rsplit("/", 1)[1] for p in storage.list_files(out + "/plots"))
    assert "overview_vstibench.png" in plots and "camera_displacement.png" in plots
    assert "| chance | frequency |" in (tmp_path / "eval" / "summary.md").read_text()
    capsys.readouterr()
    # A re-run resumes: the answered questions are not asked again, the broken video is tried again.
    assert main(argv) == 0
    assert "[evaluate] 0 done, 4 already done, 1 failed of 5" in capsys.readouterr().out
