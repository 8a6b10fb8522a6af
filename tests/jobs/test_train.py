"""jobs/train.py end to end on local Ray: 2 CPU workers, DeepSpeed ZeRO-2 over gloo, ``tiny`` preset,
supervised (``--method sft``) and by GRPO (``--method grpo``).

Inputs are built here at toy size: training conversations in the form ``jobs/generate_qa.py``
writes (question, options, answer and the LLaVA form), benchmark rows of the same questions, and
token shards written with the real ``vlm3r_core.tokens`` writer, at the preset's frame count.

Fault injection is a test hook, not a flag: ``VLM3R_TEST_FAIL_AT_STEP=<n>`` in the driver's
environment is handed to the workers, and every worker of an attempt that did not start from a
checkpoint raises just before step ``n`` (``vlm3r_core.training.check_fault_injection``).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from jobs import evaluate, train
from vlm3r_core import storage
from vlm3r_core.cli import parse
from vlm3r_core.presets import get_preset
from vlm3r_core.prompting import build_conversation, build_user_message
from vlm3r_core.tokens import EncoderInfo, VideoTokens, write_token_shard
from vlm3r_core.train_data import MicroBatchStream, TrainCollator, TrainingData, plan_training_join
from vlm3r_core.training import FAIL_AT_STEP_ENV, TrainConfig, build_model_for_training
from vlm3r_core.vlm import Vlm3rForConditionalGeneration

NUM_VIDEOS, QUESTIONS_PER_VIDEO = 6, 16
OBJECTS = ["chair", "table", "lamp", "sofa"]
OPTIONS = [f"{letter}. {name}" for letter, name in zip("ABCD", OBJECTS, strict=True)]
# 2 workers x 2 samples x 2 micro-batches = 8 samples per step; 96 conversations = 12 steps per epoch.
COMMON = ["--preset", "tiny", "--num-workers", "2", "--cpus-per-worker", "0.5", "--micro-batch-size", "2",
          "--grad-accum-steps", "2", "--lr", "3e-3", "--warmup-ratio", "0.1", "--shuffle-buffer", "16",
          "--keep-checkpoints", "2", "--max-failures", "1"]
SAMPLES_PER_STEP = 8


def write_tokens(root: str) -> str:
    """Writes the token rows of ``NUM_VIDEOS`` videos to ``<root>/tokens/<encoder>/*.parquet``; returns the folder."""
    cfg = get_preset("tiny")
    frames, grid = cfg.num_frames, cfg.cut3r_image_size // cfg.cut3r.patch_size
    encoder = EncoderInfo(preset="tiny", checkpoint="", image_size=cfg.cut3r_image_size, num_frames=frames,
                          vision_image_size=cfg.siglip_image_size)
    rng = np.random.default_rng(0)
    videos = [VideoTokens(
        video_id=f"synthetic/syn-{v:06d}", frame_indices=np.arange(frames) * 3,
        timestamps=np.arange(frames) * (0.25 + 0.01 * v), duration_s=10.0,
        camera_tokens=rng.normal(size=(frames, 1, cfg.spatial_dim)),
        patch_tokens=rng.normal(size=(frames, grid * grid, cfg.spatial_dim)),
        vision_features=rng.normal(size=(frames, cfg.vision_grid**2, cfg.vision_dim)),
    ) for v in range(NUM_VIDEOS)]  # fmt: skip
    tokens = storage.join(root, "tokens", encoder.name)
    write_token_shard(storage.join(tokens, "part-0.parquet"), videos[:3], encoder)
    write_token_shard(storage.join(tokens, "part-1.parquet"), videos[3:], encoder)
    return tokens


def write_inputs(root: str) -> tuple[str, str]:
    """Writes ``<root>/qa/train.jsonl`` (counting conversations, one without tokens) and the token
    shards; returns their URIs."""
    tokens, rows = write_tokens(root), []
    for v in range(NUM_VIDEOS):
        video_id, timestamps = f"synthetic/syn-{v:06d}", np.arange(get_preset("tiny").num_frames) * (0.25 + 0.01 * v)
        for q in range(QUESTIONS_PER_VIDEO):
            question, answer = f"How many {OBJECTS[q % 4]}(s) are in this room?", str(1 + (v + q) % 4)
            message = build_user_message(question, timestamps=timestamps.tolist(), duration_s=10.0)
            rows.append({"id": f"{video_id}-{q}", "video_id": video_id, "video": f"{video_id}.mp4", "question": question,
                         "options": [], "answer": answer, "conversations": build_conversation(message, answer),
                         "question_type": "object_counting", "data_source": "synthetic"})
    rows.append({**rows[0], "id": "no-tokens", "video_id": "synthetic/missing"})
    qa = storage.join(root, "qa", "train.jsonl")
    storage.write_jsonl(qa, rows)
    return qa, tokens


def step_losses(out: str) -> list[float]:
    """The loss of every step, in order, from the run's metrics log."""
    return [loss for row in storage.read_jsonl(f"{out}/metrics.jsonl") for loss in row["step_losses"]]


def test_parse_args_maps_every_flag_onto_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative local paths are resolved here, not in the workers' directory
    cfg, ray_options = parse(["--qa", "q", "--tokens", "s3://b/t", "--out", "o", "--gpu", "--zero-stage", "3",
                              "--max-steps", "7", "--lr", "1e-4", "--checkpoint-every", "2"], *train.CONFIGS)  # fmt: skip
    cfg = train.resolve_paths(cfg)
    assert (cfg.qa_uri, cfg.tokens_uri, cfg.out_uri) == (f"{tmp_path}/q", "s3://b/t", f"{tmp_path}/o")
    assert (ray_options.gpu, cfg.zero_stage) == ("on", 3)  # the job sets cfg.use_gpu from the cluster
    assert (cfg.max_steps, cfg.lr, cfg.checkpoint_every, cfg.lora_r) == (7, 1e-4, 2, None)
    with pytest.raises(ValueError, match="the following arguments are required: --out"):
        train.parse_args(["--qa", "q", "--tokens", "t"])
    with pytest.raises(ValueError, match="unrecognized arguments: --fail-at-step"):  # a test hook, not a flag
        train.parse_args(["--qa", "q", "--tokens", "t", "--out", "o", "--fail-at-step", "3"])
    assert train.main(["--qa", "q", "--tokens", "t", "--out", "o", "--zero-stage", "1"]) == 1


def test_train_lowers_the_loss_exports_the_model_resumes_exactly_from_s3_and_a_finished_run_exits(
    ray_local, moto_s3, monkeypatch, tmp_path, capsys, record_property
):
    qa, tokens = write_inputs(str(tmp_path / "data"))
    out = str(tmp_path / "run")
    common = ["--qa", qa, "--tokens", tokens, "--checkpoint-every", "4", *COMMON]
    args = [*common, "--out", out, "--run-name", "local"]

    assert train.main([*args, "--max-steps", "8"]) == 0
    rows = storage.read_jsonl(f"{out}/metrics.jsonl")
    assert [(r["step"], r["resumed_from_step"], len(r["step_losses"])) for r in rows] == [(4, None, 4), (8, None, 4)]
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    assert all(r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 and r["lr"] > 0 for r in rows)
    assert [s["id"] for s in storage.read_jsonl(f"{out}/skipped.jsonl")] == ["no-tokens"]
    model = Vlm3rForConditionalGeneration.from_pretrained(f"{out}/model")
    fresh = Vlm3rForConditionalGeneration.from_config(get_preset("tiny"))
    assert not torch.equal(model.projector.linear_1.weight, fresh.projector.linear_1.weight)
    card = storage.read_text(f"{out}/model/README.md")  # the model card: data, steps, batch, hardware, wall time
    assert "| steps | 8 of 8 |" in card and "| batch | 8 = 2 workers x 2 x 2 accumulation |" in card
    assert "96 used, 1 without tokens" in card and "6 videos" in card and "| hardware | 2 x 0.5 CPU |" in card

    # The same run on S3, interrupted: every worker raises before step 6; the group restarts from the
    # checkpoint of step 4 (on S3), trains step 5 again on the same batches with the same dropout, and
    # goes on to step 8 with the very losses of the run above.
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "6")
    s3 = f"{moto_s3}/runs/exp"
    assert train.main([*common, "--out", s3, "--run-name", "s3run", "--max-steps", "8"]) == 0
    monkeypatch.delenv(FAIL_AT_STEP_ENV)
    s3_rows = storage.read_jsonl(f"{s3}/metrics.jsonl")
    assert [(r["step"], r["resumed_from_step"]) for r in s3_rows] == [(4, None), (8, 4)]
    assert s3_rows[-1]["samples_seen"] == 8 * SAMPLES_PER_STEP  # no step counted twice, none lost
    record_property("step_losses", {"straight": step_losses(out), "interrupted": step_losses(s3)})
    assert step_losses(s3) == step_losses(out)  # bit-identical, step by step
    assert len(set(step_losses(s3))) == 8
    checkpoints = storage.list_files(f"{s3}/checkpoints/s3run")
    assert any(f.endswith("mp_rank_00_model_states.pt") for f in checkpoints)
    for rank in (0, 1):  # every rank's optimiser shard and random state
        assert any(f.endswith(f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt") for f in checkpoints)
        assert any(f.endswith(f"rng/rank-{rank}.pt") for f in checkpoints)
    assert Vlm3rForConditionalGeneration.from_pretrained(f"{s3}/model").config.name == "tiny"

    # A second run with the same name continues from the last checkpoint.
    assert train.main([*args, "--max-steps", "12"]) == 0
    rows = storage.read_jsonl(f"{out}/metrics.jsonl")
    assert [(r["step"], r["resumed_from_step"]) for r in rows] == [(4, None), (8, None), (12, 8)]
    assert rows[-1]["samples_seen"] == 12 * SAMPLES_PER_STEP
    assert storage.read_json(f"{out}/summary.json")["step"] == 12

    # The same command again: the run is finished, so it says so and exits without Ray or any write.
    stamps = {f: (tmp_path / f).stat().st_mtime_ns for f in storage.list_files(out)}
    capsys.readouterr()
    started = time.monotonic()
    assert train.main([*args, "--max-steps", "12"]) == 0
    assert time.monotonic() - started < 5
    assert "local: already finished at step 12 (max_steps=12), nothing to do" in capsys.readouterr().out
    assert {f: (tmp_path / f).stat().st_mtime_ns for f in storage.list_files(out)} == stamps


# GRPO (--method grpo) ------------------------------------------------------------------------------------

# 2 workers x 1 prompt x 2 micro-batches = 4 prompts (groups of 4 answers) per step.
GRPO = ["--method", "grpo", "--preset", "tiny", "--num-workers", "2", "--cpus-per-worker", "0.5",
        "--micro-batch-size", "1", "--grad-accum-steps", "2", "--lr", "3e-3", "--warmup-ratio", "0",
        "--group-size", "4", "--max-new-tokens", "4", "--shuffle-buffer", "8", "--max-failures", "1",
        "--max-steps", "4", "--checkpoint-every", "2"]  # fmt: skip


def write_benchmark(root: str) -> tuple[str, str, str, str]:
    """Benchmark rows (as ``jobs/generate_qa.py`` writes them: split folders of parquet shards with
    its schema, counting and multiple choice) for the videos of :func:`write_tokens`, rows without a
    computable reward or without tokens, and the conversations of the good rows; returns the train
    and val benchmark splits, the train conversations and the tokens."""
    import pyarrow as pa

    from datagen.dataset import SCHEMAS, shard_uri
    from datagen.qa import conversation

    def write(kind: str, split: str, shards: list[list[dict]]) -> str:
        for n, part in enumerate(shards):
            storage.write_parquet(shard_uri(root, kind, split, n), pa.Table.from_pylist(part, schema=SCHEMAS[kind]))
        return storage.join(root, "qa", kind, split)

    tokens, rows = write_tokens(root), []
    for v in range(NUM_VIDEOS):
        common = {"dataset": "synthetic", "scene_name": f"syn-{v:06d}", "video": f"syn-{v:06d}.mp4", "split": "train"}
        for q in range(4):
            rows.append({**common, "id": f"count-{v}-{q}", "question_type": "object_counting", "options": [],
                         "question": f"How many {OBJECTS[q]}(s) are in this room?", "ground_truth": str(1 + (v + q) % 4),
                         "mc_answer": None})
            letter = "ABCD"[(v + q) % 4]
            rows.append({**common, "id": f"near-{v}-{q}", "question_type": "object_rel_distance", "options": OPTIONS,
                         "question": f"Which of these is closest to the {['bed', 'door', 'tv', 'sink'][q]}?",
                         "ground_truth": letter, "mc_answer": letter})
    good = list(rows)
    rows += [{**rows[0], "id": "bad-type", "question_type": "object_color"},
             {**rows[0], "id": "no-gt", "ground_truth": None},
             {**rows[1], "id": "no-tokens", "scene_name": "missing"}]  # fmt: skip
    bench = write("benchmark", "train", [rows[:24], rows[24:]])
    val = write("benchmark", "val", [[dict(r, split="val") for r in good[:4]]])
    times = np.arange(get_preset("tiny").num_frames) * 0.25
    conversations = write("conversations", "train",
                          [[conversation(r, times.tolist(), 10.0, get_preset("tiny").prompt) for r in good]])
    return bench, val, conversations, tokens


@pytest.fixture(scope="module")
def grpo_inputs(tmp_path_factory):
    """The benchmark, the tokens, and a supervised model to start from: the tiny model after 20
    in-process supervised steps on the conversations (it answers with digits and letters, not
    always the right ones), saved as ``jobs/train.py`` exports it."""
    root = str(tmp_path_factory.mktemp("grpo"))
    bench, val, conversations, tokens = write_benchmark(root)
    cfg = TrainConfig(qa_uri=conversations, tokens_uri=tokens, out_uri=f"{root}/sft", micro_batch_size=8)
    model, processor = build_model_for_training(cfg)
    data = TrainingData.split(plan_training_join(conversations, tokens, model.config), 1, cfg.micro_batch_size)
    stream = MicroBatchStream(data, 0, TrainCollator(processor, torch.float32), 1, seed=0, shuffle_window=16)
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=3e-3)
    for _ in range(20):
        (batch,) = stream.next_step()
        loss = model(batch.input_ids, batch.attention_mask, batch.labels, features=batch.features).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    stream.close()
    model.save_pretrained(cfg.model_uri, processor)
    return bench, val, tokens, cfg.model_uri


def grpo_steps(out: str) -> list[dict]:
    """Every step's GRPO metrics, in order, from the run's metrics log."""
    return [step for row in storage.read_jsonl(f"{out}/metrics.jsonl") for step in row["steps"]]


def test_grpo_parses_its_settings_and_refuses_a_start_model_for_supervised_tuning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg, _ = parse(["--qa", "b.parquet", "--tokens", "t", "--out", "o", "--method", "grpo", "--init-model", "m",
                    "--group-size", "4", "--kl-beta", "0", "--answer-form", "think", "--micro-batch-size", "2"],
                   *train.CONFIGS)  # fmt: skip
    assert (cfg.method, cfg.init_model, cfg.micro_batch_size) == ("grpo", "m", 2)
    assert (cfg.grpo.group_size, cfg.grpo.kl_beta, cfg.grpo.answer_form) == (4, 0.0, "think")
    resolved = train.parse_args(["--qa", "q", "--tokens", "t", "--out", "o", "--method", "grpo", "--init-model", "m"])
    assert resolved.init_model == str(tmp_path / "m")  # Ray Train workers run in their own directory
    with pytest.raises(ValueError, match="unrecognized arguments: --rollout-lr"):  # --lr is the run's, for both methods
        train.parse_args(["--qa", "q", "--tokens", "t", "--out", "o", "--method", "grpo", "--rollout-lr", "1"])
    assert train.main(["--qa", "q", "--tokens", "t", "--out", "o", "--init-model", "m"]) == 1
    assert train.main(["--qa", "q", "--tokens", "t", "--out", "o", "--method", "grpo", "--group-size", "1"]) == 1


def test_grpo_resumes_exactly_after_a_killed_worker_and_its_model_loads_in_evaluation_and_serving(
    ray_local, grpo_inputs, tmp_path, monkeypatch, capsys, record_property
):
    from serve_apps.deployments import ENCODER_PARTS, LANGUAGE_PARTS, load_model

    bench, val, tokens, init = grpo_inputs
    args = ["--qa", bench, "--tokens", tokens, "--init-model", init, *GRPO]
    straight = str(tmp_path / "straight")
    assert train.main([*args, "--out", straight, "--run-name", "straight"]) == 0
    rows = storage.read_jsonl(f"{straight}/metrics.jsonl")
    assert [(r["step"], r["resumed_from_step"], len(r["steps"])) for r in rows] == [(2, None, 2), (4, None, 2)]
    steps = grpo_steps(straight)
    for step in steps:  # rewards per question type over all workers, KL, length, degenerate and clip fractions
        assert step["num_groups"] == 4 and 0 <= step["degenerate_fraction"] <= 1 and step["clip_fraction"] == 0
        assert step["reward/object_counting/count"] + step["reward/object_rel_distance/count"] == 16
        assert step["mean_completion_tokens"] > 0 and step["kl"] >= 0
    assert any(s["updated"] and s["degenerate_fraction"] < 1 for s in steps) and steps[-1]["kl"] > 0
    assert rows[-1]["samples_seen"] == 4 * 4 and rows[-1]["reward_mean"] >= 0
    skipped = {s["id"]: s["reason"] for s in storage.read_jsonl(f"{straight}/skipped.jsonl")}
    assert set(skipped) == {"bad-type", "no-gt", "no-tokens"}
    assert "unknown question_type 'object_color'" in skipped["bad-type"] and skipped["no-gt"] == "misses ground_truth"
    assert "no token row" in skipped["no-tokens"]
    summary = storage.read_json(f"{straight}/summary.json")  # the last window's means, per question type too
    assert summary["method"] == "grpo" and summary["reward_mean"] == rows[-1]["reward_mean"]
    assert summary["reward/object_counting/count"] + summary["reward/object_rel_distance/count"] == 2 * 16
    assert f"straight: step 4/4, loss {rows[-1]['loss']:.4f} (GRPO, means since the checkpoint before: reward " in (
        capsys.readouterr().out)  # fmt: skip
    card = storage.read_text(f"{straight}/model/README.md")
    assert "| benchmark rows (GRPO) | " in card and "48 used, 3 without tokens or a computable reward" in card
    assert f"| GRPO | from `{init}`; group of 4, temperature 1.0" in card

    # Every worker raises before step 4: the group restarts from step 2's checkpoint, samples the
    # same answers for step 3 again (same prompts, same random state) and takes the same updates.
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "4")
    out = str(tmp_path / "killed")
    assert train.main([*args, "--out", out, "--run-name", "killed"]) == 0
    monkeypatch.delenv(FAIL_AT_STEP_ENV)
    rows = storage.read_jsonl(f"{out}/metrics.jsonl")
    assert [(r["step"], r["resumed_from_step"]) for r in rows] == [(2, None), (4, 2)]
    record_property("grpo_steps", {"straight": [(s["reward_mean"], s["loss"]) for s in steps],
                                   "interrupted": [(s["reward_mean"], s["loss"]) for s in grpo_steps(out)]})
    assert grpo_steps(out) == steps  # every metric of every step, bit for bit
    assert step_losses(out) == step_losses(straight)

    # The exported model (merged supervised LoRA + the GRPO adapter) is what evaluation and serving load.
    policy = Vlm3rForConditionalGeneration.from_pretrained(f"{out}/model")
    assert any(p.abs().sum() > 0 for n, p in policy.named_parameters() if "lora_B" in n)  # the adapter starts at 0
    assert evaluate.main(["--model", f"{out}/model", "--benchmark", val, "--tokens", tokens,
                          "--out", str(tmp_path / "eval"), "--max-new-tokens", "4"]) == 0  # fmt: skip
    predictions = storage.read_jsonl(str(tmp_path / "eval" / "predictions.jsonl"))
    assert len(predictions) == 4 and all(isinstance(p["prediction"], str) for p in predictions)
    language, _ = load_model(f"{out}/model", LANGUAGE_PARTS)  # each Serve replica's share
    encoders, _ = load_model(f"{out}/model", ENCODER_PARTS)
    assert language.config.name == encoders.config.name == "tiny"
    torch.testing.assert_close(language.state_dict(), {k: policy.state_dict()[k] for k in language.state_dict()})

    capsys.readouterr()  # a finished run says so and exits
    assert train.main([*args, "--out", out, "--run-name", "killed"]) == 0
    assert "killed: already finished at step 4 (max_steps=4), nothing to do" in capsys.readouterr().out
