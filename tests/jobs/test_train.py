"""jobs/train.py end to end on local Ray: 2 CPU workers, DeepSpeed ZeRO-2 over gloo, ``tiny`` preset.

Inputs are built here at toy size: training conversations in the form ``jobs/generate_qa.py``
writes (question, options, answer and the LLaVA form) and token shards written with the real
``vlm3r_core.tokens`` writer, at the preset's frame count.

Fault injection is a test hook, not a flag: ``VLM3R_TEST_FAIL_AT_STEP=<n>`` in the driver's
environment is handed to the workers, and every worker of an attempt that did not start from a
checkpoint raises just before step ``n`` (``vlm3r_core.training.check_fault_injection``).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from jobs import train
from vlm3r_core import storage
from vlm3r_core.cli import parse
from vlm3r_core.presets import get_preset
from vlm3r_core.prompting import build_conversation, build_user_message
from vlm3r_core.tokens import EncoderInfo, VideoTokens, write_token_shard
from vlm3r_core.training import FAIL_AT_STEP_ENV
from vlm3r_core.vlm import Vlm3rForConditionalGeneration

NUM_VIDEOS, QUESTIONS_PER_VIDEO = 6, 16
# 2 workers x 2 samples x 2 micro-batches = 8 samples per step; 96 conversations = 12 steps per epoch.
COMMON = ["--preset", "tiny", "--num-workers", "2", "--cpus-per-worker", "0.5", "--micro-batch-size", "2",
          "--grad-accum-steps", "2", "--lr", "3e-3", "--warmup-ratio", "0.1", "--shuffle-buffer", "16",
          "--keep-checkpoints", "2", "--max-failures", "1"]
SAMPLES_PER_STEP = 8


def write_inputs(root: str) -> tuple[str, str]:
    """Writes ``<root>/qa/train.jsonl`` and ``<root>/tokens/<encoder>/*.parquet``; returns their URIs."""
    cfg = get_preset("tiny")
    frames, grid = cfg.num_frames, cfg.cut3r_image_size // cfg.cut3r.patch_size
    encoder = EncoderInfo(preset="tiny", checkpoint="", image_size=cfg.cut3r_image_size, num_frames=frames,
                          vision_image_size=cfg.siglip_image_size)
    rng = np.random.default_rng(0)
    videos, rows = [], []
    for v in range(NUM_VIDEOS):
        video_id, timestamps = f"synthetic/syn-{v:06d}", np.arange(frames) * (0.25 + 0.01 * v)
        videos.append(VideoTokens(
            video_id=video_id, frame_indices=np.arange(frames) * 3, timestamps=timestamps, duration_s=10.0,
            camera_tokens=rng.normal(size=(frames, 1, cfg.spatial_dim)),
            patch_tokens=rng.normal(size=(frames, grid * grid, cfg.spatial_dim)),
            vision_features=rng.normal(size=(frames, cfg.vision_grid**2, cfg.vision_dim)),
        ))
        for q in range(QUESTIONS_PER_VIDEO):
            question, answer = f"How many {['chair', 'table', 'lamp', 'sofa'][q % 4]}(s) are in this room?", str(1 + (v + q) % 4)
            message = build_user_message(question, timestamps=timestamps.tolist(), duration_s=10.0)
            rows.append({"id": f"{video_id}-{q}", "video_id": video_id, "video": f"{video_id}.mp4", "question": question,
                         "options": [], "answer": answer, "conversations": build_conversation(message, answer),
                         "question_type": "object_counting", "data_source": "synthetic"})
    rows.append({**rows[0], "id": "no-tokens", "video_id": "synthetic/missing"})
    tokens = storage.join(root, "tokens", encoder.name)
    write_token_shard(storage.join(tokens, "part-0.parquet"), videos[:3], encoder)
    write_token_shard(storage.join(tokens, "part-1.parquet"), videos[3:], encoder)
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


def test_train_lowers_the_loss_exports_the_model_a_rerun_resumes_and_a_finished_run_exits(ray_local, tmp_path, capsys):
    qa, tokens = write_inputs(str(tmp_path / "data"))
    out = str(tmp_path / "run")
    args = ["--qa", qa, "--tokens", tokens, "--out", out, "--run-name", "local", "--checkpoint-every", "4", *COMMON]

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


def test_an_interrupted_run_resumes_from_s3_and_replays_the_lost_steps_exactly(ray_local, moto_s3, monkeypatch,
                                                                               record_property):
    qa, tokens = write_inputs(f"{moto_s3}/data")
    args = ["--qa", qa, "--tokens", tokens, "--max-steps", "4", "--checkpoint-every", "2", *COMMON]

    straight = f"{moto_s3}/runs/straight"
    assert train.main([*args, "--out", straight, "--run-name", "straight"]) == 0

    # Every worker raises before step 4; the group restarts from the checkpoint of step 2 (on S3),
    # trains step 3 again on the same batches with the same dropout, and goes on to step 4.
    monkeypatch.setenv(FAIL_AT_STEP_ENV, "4")
    out = f"{moto_s3}/runs/exp"
    assert train.main([*args, "--out", out, "--run-name", "s3run"]) == 0
    rows = storage.read_jsonl(f"{out}/metrics.jsonl")
    assert [(r["step"], r["resumed_from_step"]) for r in rows] == [(2, None), (4, 2)]
    assert rows[-1]["samples_seen"] == 4 * SAMPLES_PER_STEP  # no step counted twice, none lost
    record_property("step_losses", {"straight": step_losses(straight), "interrupted": step_losses(out)})
    assert step_losses(out) == step_losses(straight)  # bit-identical, step by step
    assert len(set(step_losses(out))) == 4
    checkpoints = storage.list_files(f"{out}/checkpoints/s3run")
    assert any(f.endswith("mp_rank_00_model_states.pt") for f in checkpoints)
    for rank in (0, 1):  # every rank's optimiser shard and random state
        assert any(f.endswith(f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt") for f in checkpoints)
        assert any(f.endswith(f"rng/rank-{rank}.pt") for f in checkpoints)
    assert Vlm3rForConditionalGeneration.from_pretrained(f"{out}/model").config.name == "tiny"
