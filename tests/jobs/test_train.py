"""jobs/train.py end to end on local Ray: 2 CPU workers, DeepSpeed ZeRO-2 over gloo, ``tiny`` preset.

Inputs are built here at toy size: training conversations made with the shared prompt builder and
token shards written with the real ``vlm3r_core.tokens`` writer.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jobs import train
from vlm3r_core import storage
from vlm3r_core.presets import get_preset
from vlm3r_core.prompting import build_conversation, build_user_message
from vlm3r_core.tokens import EncoderInfo, VideoTokens, write_token_shard
from vlm3r_core.vlm import Vlm3rForConditionalGeneration

NUM_VIDEOS, QUESTIONS_PER_VIDEO, NUM_FRAMES = 6, 16, 4
# 2 workers x 2 samples x 2 micro-batches = 8 samples per step; 96 conversations = 12 steps per epoch.
COMMON = ["--preset", "tiny", "--num-workers", "2", "--cpus-per-worker", "0.5", "--micro-batch-size", "2",
          "--grad-accum-steps", "2", "--lr", "3e-3", "--warmup-ratio", "0.1", "--shuffle-buffer", "16",
          "--keep-checkpoints", "2", "--max-failures", "1"]
SAMPLES_PER_STEP = 8


def write_inputs(root: str) -> tuple[str, str]:
    """Writes ``<root>/qa/train.jsonl`` and ``<root>/tokens/<encoder>/*.parquet``; returns their URIs."""
    cfg = get_preset("tiny")
    grid = cfg.cut3r_image_size // cfg.cut3r.patch_size
    encoder = EncoderInfo(preset="tiny", checkpoint="", image_size=cfg.cut3r_image_size, num_frames=NUM_FRAMES,
                          vision_image_size=cfg.siglip_image_size)
    rng = np.random.default_rng(0)
    timestamps = np.arange(NUM_FRAMES) * 0.5
    videos, rows = [], []
    for v in range(NUM_VIDEOS):
        video_id = f"synthetic/syn-{v:06d}"
        videos.append(VideoTokens(
            video_id=video_id, frame_indices=np.arange(NUM_FRAMES) * 3, timestamps=timestamps, duration_s=2.0,
            camera_tokens=rng.normal(size=(NUM_FRAMES, 1, cfg.spatial_dim)),
            patch_tokens=rng.normal(size=(NUM_FRAMES, grid * grid, cfg.spatial_dim)),
            vision_features=rng.normal(size=(NUM_FRAMES, cfg.vision_grid**2, cfg.vision_dim)),
        ))
        for q in range(QUESTIONS_PER_VIDEO):
            category = ["chair", "table", "lamp", "sofa"][q % 4]
            message = build_user_message(f"How many {category}(s) are in this room?", timestamps=timestamps.tolist(),
                                         duration_s=2.0)
            rows.append({"id": f"{video_id}-{q}", "video_id": video_id, "video": f"{video_id}.mp4",
                         "conversations": build_conversation(message, str(1 + (v + q) % 4)),
                         "question_type": "object_counting", "data_source": "synthetic"})
    rows.append({**rows[0], "id": "no-tokens", "video_id": "synthetic/missing"})
    tokens = storage.join(root, "tokens", encoder.name)
    write_token_shard(storage.join(tokens, "part-0.parquet"), videos[:3], encoder)
    write_token_shard(storage.join(tokens, "part-1.parquet"), videos[3:], encoder)
    qa = storage.join(root, "qa", "train.jsonl")
    storage.write_jsonl(qa, rows)
    return qa, tokens


def test_parse_args_maps_every_flag_onto_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative local paths are resolved here, not in the workers' directory
    cfg = train.parse_args(["--qa", "q", "--tokens", "s3://b/t", "--out", "o", "--gpu", "--zero-stage", "3",
                            "--max-steps", "7", "--lr", "1e-4", "--fail-at-step", "7", "--checkpoint-every", "2"])
    assert (cfg.qa_uri, cfg.tokens_uri, cfg.out_uri) == (f"{tmp_path}/q", "s3://b/t", f"{tmp_path}/o")
    assert (cfg.use_gpu, cfg.zero_stage) == (True, 3)
    assert (cfg.max_steps, cfg.lr, cfg.fail_at_step, cfg.lora_r) == (7, 1e-4, 7, None)
    with pytest.raises(SystemExit):
        train.parse_args(["--qa", "q", "--tokens", "t"])


def test_train_lowers_the_loss_exports_the_model_and_a_rerun_resumes(ray_local, tmp_path):
    qa, tokens = write_inputs(str(tmp_path / "data"))
    out = str(tmp_path / "run")
    args = ["--qa", qa, "--tokens", tokens, "--out", out, "--run-name", "local", "--checkpoint-every", "4", *COMMON]

    assert train.main([*args, "--max-steps", "8"]) == 0
    rows = storage.read_jsonl(f"{out}/metrics.jsonl")
    assert [(r["step"], r["resumed_from_step"]) for r in rows] == [(4, None), (8, None)]
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


def test_a_worker_failure_resumes_from_the_last_checkpoint_on_s3(ray_local, moto_s3, tmp_path):
    qa, tokens = write_inputs(f"{moto_s3}/data")
    out = f"{moto_s3}/runs/exp"
    args = ["--qa", qa, "--tokens", tokens, "--out", out, "--run-name", "s3run", *COMMON]

    # Every worker raises before step 4; the group restarts from the checkpoint of step 2 (on S3).
    assert train.main([*args, "--max-steps", "6", "--checkpoint-every", "2", "--fail-at-step", "4"]) == 0
    rows = storage.read_jsonl(f"{out}/metrics.jsonl")
    assert [(r["step"], r["resumed_from_step"]) for r in rows] == [(2, None), (4, 2), (6, 2)]
    assert rows[-1]["samples_seen"] == 6 * SAMPLES_PER_STEP  # no step counted twice, none lost
    checkpoints = storage.list_files(f"{out}/checkpoints/s3run")
    assert any(f.endswith("mp_rank_00_model_states.pt") for f in checkpoints)
    assert any(f.endswith("zero_pp_rank_1_mp_rank_00_optim_states.pt") for f in checkpoints)  # every rank's shard
    assert Vlm3rForConditionalGeneration.from_pretrained(f"{out}/model").config.name == "tiny"
