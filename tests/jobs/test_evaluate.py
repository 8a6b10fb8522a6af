"""jobs/evaluate.py on the shared local Ray with the tiny preset, from raw videos and from token shards."""

import json

import numpy as np
import pytest
import torch

from jobs.evaluate import main
from vlm3r_core import storage
from vlm3r_core.inference import AnswerQuestions
from vlm3r_core.presets import get_preset
from vlm3r_core.tokens import EncoderInfo, VideoTokens, write_token_shard
from vlm3r_core.video import read_video, write_video
from vlm3r_core.vlm import Vlm3rForConditionalGeneration, Vlm3rProcessor


def _benchmark(tmp_path, rows):
    uri = str(tmp_path / "bench.jsonl")
    storage.write_jsonl(uri, rows)
    return uri


def _rows(video_uri):
    common = {"dataset": "synthetic", "scene_name": "syn-0", "video": video_uri, "split": "val"}
    return [
        {"id": "q0", "question_type": "object_counting", "question": "How many chair(s) are in this room?",
         "options": [], "ground_truth": "2", "mc_answer": None, **common},
        {"id": "q1", "question_type": "object_rel_distance", "question": "Which is closest to the bed?",
         "options": ["A. chair", "B. lamp"], "ground_truth": "chair", "mc_answer": "A", **common},
        {"id": "q2", "question_type": "object_counting", "question": "How many lamp(s) are in this room?",
         "options": [], "ground_truth": "3", "mc_answer": None, "dataset": "synthetic", "scene_name": "gone",
         "video": "/nonexistent/gone.mp4", "split": "val"},
    ]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    uri = str(tmp_path_factory.mktemp("videos") / "syn-0.mp4")
    rng = np.random.default_rng(0)
    write_video(uri, rng.integers(0, 255, (40, 48, 64, 3), dtype=np.uint8), fps=10)
    return uri


def test_evaluates_raw_videos_and_records_failed_videos(ray_local, tmp_path, video):
    out = str(tmp_path / "eval")
    assert main(["--model", "tiny", "--benchmark", _benchmark(tmp_path, _rows(video)), "--out", out, "--batch-size", "2"]) == 0
    predictions = storage.read_jsonl(out + "/predictions.jsonl")
    assert [p["id"] for p in predictions] == ["q0", "q1", "q2"]
    assert all(isinstance(p["prediction"], str) for p in predictions[:2])
    assert predictions[2]["prediction"] is None and predictions[2]["score_official"] == 0.0
    errors = storage.read_jsonl(out + "/errors.jsonl")
    assert [e["id"] for e in errors] == ["q2"] and "gone.mp4" in errors[0]["error"]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["num_questions"] == 3 and "vsibench" in summary["benchmarks"]
    assert (tmp_path / "eval" / "plots" / "overview_vsibench.png").stat().st_size > 1000
    report = (tmp_path / "eval" / "report.html").read_text()  # beside summary.md, frames of the real video
    assert report.count('<img class="frame" src="data:image/jpeg;base64,') == 8  # q0 and q1, 4 frames each
    assert "frames unavailable" in report and "gone.mp4" in report


def test_an_interrupted_run_resumes_with_the_answers_it_saved(ray_local, tmp_path, video, capsys):
    out = str(tmp_path / "eval")
    # What an interrupted run left: q0 answered (kept), q1 answered by another model (ignored).
    storage.write_jsonl(out + "/answers.jsonl", [
        {"id": "q0", "video_id": "synthetic/syn-0", "prediction": "2", "model": "tiny"},
        {"id": "q1", "video_id": "synthetic/syn-0", "prediction": "A", "model": "other"},
    ])
    argv = ["--model", "tiny", "--benchmark", _benchmark(tmp_path, _rows(video)), "--out", out]
    assert main(argv) == 0
    predictions = {p["id"]: p for p in storage.read_jsonl(out + "/predictions.jsonl")}
    assert predictions["q0"]["prediction"] == "2" and predictions["q0"]["score_official"] == 1.0
    assert predictions["q1"]["prediction"] == AnswerQuestions("tiny").answer([dict(_rows(video)[1], video_id="synthetic/syn-0")])[0][0]
    assert [a["id"] for a in storage.read_jsonl(out + "/answers.jsonl")] == ["q0", "q1"]  # q2's video is gone
    capsys.readouterr()
    # Re-run on the same state: nothing is answered again, the same verdict.
    assert main(argv) == 0
    assert "[evaluate] 0 done, 2 already done, 1 failed of 3" in capsys.readouterr().out


def test_token_shards_give_the_same_answers_as_raw_video(tmp_path, video):
    raw = AnswerQuestions("tiny")
    decoded = read_video(video, num_samples=raw.model.config.num_frames)
    feats = raw.model.encode_frames(raw.processor.preprocess_frames([decoded.frames]))
    tokens = VideoTokens(
        video_id="synthetic/syn-0",
        frame_indices=decoded.frame_indices,
        timestamps=decoded.timestamps,
        duration_s=decoded.duration_s,
        camera_tokens=feats.camera_tokens[0].numpy(),
        patch_tokens=feats.patch_tokens[0].numpy(),
        vision_features=feats.vision_features[0].numpy(),
    )
    shards = str(tmp_path / "tokens")
    cfg = raw.model.config
    encoder = EncoderInfo(
        preset="tiny", checkpoint="", image_size=cfg.cut3r_image_size, num_frames=cfg.num_frames,
        vision_image_size=cfg.siglip_image_size, dtype="float32",
    )
    write_token_shard(shards + "/part-0.parquet", [tokens], encoder)
    rows = [dict(r, video_id=f"{r['dataset']}/{r['scene_name']}") for r in _rows(video)]
    from_video = raw.answer(rows)
    from_tokens = AnswerQuestions("tiny", tokens=shards).answer(rows)
    assert [p for p, _ in from_tokens[:2]] == [p for p, _ in from_video[:2]]
    assert from_tokens[2] == (None, f"no token row for synthetic/gone in {shards}")


def test_a_question_the_model_cannot_take_fails_alone_in_its_batch(video):
    answerer = AnswerQuestions("tiny")
    rows = [dict(r, video_id=f"{r['dataset']}/{r['scene_name']}") for r in _rows(video)[:2]]
    alone = answerer.answer(rows)
    poisoned = dict(rows[0], id="long", question="How many chairs? " * 4000)  # past the tiny model's context
    results = answerer.answer([rows[0], poisoned, rows[1]])
    assert results[0] == alone[0] and results[2] == alone[1]
    assert results[1][0] is None and "ValueError" in results[1][1]


def _token_shards(answerer: AnswerQuestions, video: str, shards: str) -> None:
    """The video's features from ``answerer``'s model (any dtype), stored as float32 token shards."""
    cfg = answerer.model.config
    decoded = read_video(video, num_samples=cfg.num_frames)
    feats = answerer.model.encode_frames(answerer.processor.preprocess_frames([decoded.frames]))
    tokens = VideoTokens(
        video_id="synthetic/syn-0", frame_indices=decoded.frame_indices, timestamps=decoded.timestamps,
        duration_s=decoded.duration_s, camera_tokens=feats.camera_tokens[0].float().numpy(),
        patch_tokens=feats.patch_tokens[0].float().numpy(), vision_features=feats.vision_features[0].float().numpy(),
    )  # fmt: skip
    encoder = EncoderInfo(preset="tiny", checkpoint="", image_size=cfg.cut3r_image_size, num_frames=cfg.num_frames,
                          vision_image_size=cfg.siglip_image_size, dtype="float32")  # fmt: skip
    write_token_shard(shards + "/part-0.parquet", [tokens], encoder)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_every_dtype_answers_from_raw_video_and_from_token_shards(tmp_path, video, dtype):
    rows = [dict(r, video_id=f"{r['dataset']}/{r['scene_name']}") for r in _rows(video)[:2]]
    raw = AnswerQuestions("tiny", dtype=dtype)
    assert raw.model.config.dtype == dtype and next(raw.model.parameters()).dtype == getattr(torch, dtype)
    shards = str(tmp_path / "tokens")
    _token_shards(raw, video, shards)
    from_video = raw.answer(rows)
    from_tokens = AnswerQuestions("tiny", tokens=shards, dtype=dtype).answer(rows)
    assert all(isinstance(p, str) and e is None for p, e in from_video)
    assert from_tokens == from_video


def test_a_bf16_model_folder_evaluates_from_raw_video_and_its_model_card_gets_the_results(ray_local, tmp_path, video):
    config = get_preset("tiny", dtype="bfloat16", num_frames=8)
    model_dir = str(tmp_path / "model")
    Vlm3rForConditionalGeneration.from_config(config).save_pretrained(model_dir, Vlm3rProcessor.from_config(config))
    out = str(tmp_path / "eval")
    argv = ["--model", model_dir, "--benchmark", _benchmark(tmp_path, _rows(video)[:2]), "--out", out, "--title", "bf16"]
    assert main(argv) == 0
    predictions = storage.read_jsonl(out + "/predictions.jsonl")
    rows = [dict(r, video_id=f"{r['dataset']}/{r['scene_name']}") for r in _rows(video)[:2]]
    assert [p["prediction"] for p in predictions] == [p for p, _ in AnswerQuestions(model_dir).answer(rows)]
    card = (tmp_path / "model" / "README.md").read_text()
    assert "### bf16" in card and "| object_counting | 1 |" in card and "model-index" in card
    assert json.loads((tmp_path / "model" / "evaluations.json").read_text())[0]["out"] == out
    # Blind: the same model without the video; its answers are kept apart in the ledger.
    assert main([*argv[:-2], "--blind", "--title", "bf16 blind", "--out", out]) == 0
    assert {a["model"] for a in storage.read_jsonl(out + "/answers.jsonl")} == {f"{model_dir} [blind]"}
    assert json.loads((tmp_path / "eval" / "summary.json").read_text())["run"]["blind"] is True


def test_online_contexts_equal_the_offline_context_after_the_whole_video(video):
    """The live-session path on the sampled frames gives the offline features bit for bit (CPU fp32);
    halfway it holds the frames played so far and says the video lasted half as long."""
    from vlm3r_core.inference import context_from_video, load_model, online_contexts

    model, processor = load_model("tiny")
    offline = context_from_video(model, processor, video)
    online = online_contexts(model, video, (0.5,))
    assert sorted(online) == [0.5, 1.0]
    end = online[1.0]
    assert end.timestamps == offline.timestamps and end.duration_s == offline.duration_s
    for name in ("vision_features", "camera_tokens", "patch_tokens", "frame_mask"):
        assert torch.equal(getattr(end.features, name), getattr(offline.features, name)), name
    half = online[0.5]
    seen = [t for t in offline.timestamps if t <= 0.5 * offline.duration_s]
    assert 0 < len(seen) < len(offline.timestamps) and half.timestamps == tuple(seen)
    assert half.duration_s == 0.5 * offline.duration_s
    assert torch.equal(half.features.camera_tokens, offline.features.camera_tokens[:, : len(seen)])  # causal
    with pytest.raises(ValueError, match=r"fractions must lie in \(0, 1\]"):
        online_contexts(model, video, (0.0,))


def test_online_evaluation_answers_like_offline_and_plots_the_score_against_video_seen(ray_local, tmp_path, video,
                                                                                      capsys):  # fmt: skip
    out = str(tmp_path / "online")
    argv = ["--model", "tiny", "--benchmark", _benchmark(tmp_path, _rows(video)), "--out", out, "--online",
            "--online-fractions", "0.5", "0.25"]  # fmt: skip
    assert main(argv) == 0  # q2's video is gone: recorded in errors.jsonl, the rest answered
    predictions = storage.read_jsonl(out + "/predictions.jsonl")
    offline = AnswerQuestions("tiny").answer([dict(r, video_id=f"{r['dataset']}/{r['scene_name']}") for r in _rows(video)])
    assert [p["prediction"] for p in predictions] == [p for p, _ in offline]  # the end answers are the offline ones
    partial = storage.read_jsonl(out + "/predictions_online.jsonl")
    assert [(p["id"], p["seen_fraction"]) for p in partial] == [
        ("q0@0.25", 0.25), ("q1@0.25", 0.25), ("q2@0.25", 0.25), ("q0@0.5", 0.5), ("q1@0.5", 0.5), ("q2@0.5", 0.5)]
    assert all(isinstance(p["prediction"], str) for p in partial if not p["id"].startswith("q2"))
    summary = json.loads((tmp_path / "online" / "summary.json").read_text())
    assert summary["run"]["online"] and summary["run"]["answerer"] == "tiny [online]"
    curve = summary["online_curve"]["vsibench"]
    assert [p["fraction"] for p in curve] == [0.25, 0.5, 1.0]
    assert curve[-1]["official"] == summary["benchmarks"]["vsibench"]["overall"]["official"]
    assert (tmp_path / "online" / "plots" / "online_curve.png").stat().st_size > 1000
    assert "Online: score by fraction of the video seen" in (tmp_path / "online" / "summary.md").read_text()
    errors = storage.read_jsonl(out + "/errors.jsonl")
    assert sorted(e["id"] for e in errors) == ["q2", "q2@0.25", "q2@0.5"]
    capsys.readouterr()
    assert main(argv) == 0  # a re-run answers nothing again and gives the same verdict
    assert "[evaluate] 0 done, 6 already done, 3 failed of 9" in capsys.readouterr().out


def test_online_refuses_what_it_cannot_stream(tmp_path, video, capsys):
    bench = _benchmark(tmp_path, _rows(video))
    for extra, message in ((["--blind"], "neither an openai: endpoint, --tokens nor --blind"),
                           (["--online-fractions", "1.0"], "must each lie in (0, 1)")):  # fmt: skip
        assert main(["--model", "tiny", "--benchmark", bench, "--out", str(tmp_path / "x"), "--online", *extra]) == 1
        assert message in capsys.readouterr().err


def test_a_video_whose_questions_span_batches_is_streamed_once(video, monkeypatch):
    from vlm3r_core import inference

    calls = []
    real = inference.online_contexts
    monkeypatch.setattr(inference, "online_contexts", lambda *a: calls.append(a[2]) or real(*a))
    answerer = AnswerQuestions("tiny", online=True, online_fractions=(0.5,))
    rows = [dict(r, video_id="synthetic/syn-0") for r in _rows(video)[:2]]
    first = answerer.answer([dict(rows[0], seen_fraction=0.5), rows[0]])
    second = answerer.answer([rows[1], dict(rows[1], id="q1@0.3", seen_fraction=0.3)])
    assert calls == [(0.5, 1.0)]  # one stream for both batches and both fractions
    assert all(p is not None and e is None for p, e in first + second[:1])
    assert second[1] == (None, "no context for this row (an online row whose seen_fraction is not among online_fractions)")
