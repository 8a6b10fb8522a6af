"""Training library: config, schedule, DeepSpeed configs, the join, the collator, and real
single-process DeepSpeed steps, checkpoints and export on the ``tiny`` preset (no Ray)."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch

from vlm3r_core import storage
from vlm3r_core.prompting import build_conversation, build_user_message
from vlm3r_core.train_data import (
    TrainCollator,
    example_from_row,
    join_conversations,
    plan_join,
    plan_training_join,
    read_training_examples,
)
from vlm3r_core.training import TrainConfig, deepspeed_config, lr_at

URIS = {"qa_uri": "qa.jsonl", "tokens_uri": "tokens", "out_uri": "out"}


def _row(i: int, video_id: str, answer: str = "3") -> dict:
    message = build_user_message(f"How many chair(s) are in this room? ({i})", timestamps=[0.0, 0.5], duration_s=1.0)
    return {"id": f"q{i}", "video_id": video_id, "video": f"{video_id}.mp4",
            "conversations": build_conversation(message, answer), "question_type": "object_counting",
            "data_source": "synthetic"}


# Config and schedule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [{"zero_stage": 1}, {"max_steps": 0}, {"lr": 0.0}, {"warmup_ratio": 1.0}, {"qa_uri": ""},
     {"checkpoint_every": 5, "fail_at_step": 5}, {"max_steps": 10, "checkpoint_every": 2, "fail_at_step": 11}],
)
def test_train_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        TrainConfig(**{**URIS, **bad})


def test_train_config_paths_and_dtype():
    cfg = TrainConfig(qa_uri="qa", tokens_uri="t", out_uri="s3://bucket/run")
    assert cfg.storage_path == "s3://bucket/run/checkpoints"
    assert cfg.model_uri == "s3://bucket/run/model"
    assert cfg.dtype == torch.float32 and TrainConfig(**URIS, use_gpu=True).dtype == torch.bfloat16
    assert os.path.isabs(TrainConfig(**URIS).storage_path)


def test_lr_warms_up_linearly_then_decays_by_cosine_to_zero():
    cfg = TrainConfig(**URIS, lr=1e-3, max_steps=100, warmup_ratio=0.1)
    lrs = [lr_at(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert (np.diff(lrs[:10]) > 0).all() and (np.diff(lrs[9:]) <= 0).all()
    assert lrs[10 + 45] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[-1] < 1e-3 * 0.001
    assert lr_at(TrainConfig(**URIS, lr=1e-3, warmup_ratio=0.0), 0) == pytest.approx(1e-3)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_config_fills_every_auto_from_the_run(stage):
    cfg = TrainConfig(**URIS, zero_stage=stage, micro_batch_size=2, grad_accum_steps=4, max_grad_norm=0.5)
    ds = deepspeed_config(cfg)
    assert ds["zero_optimization"]["stage"] == stage
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"], ds["gradient_clipping"]) == (2, 4, 0.5)
    assert ds["bf16"]["enabled"] is False
    assert deepspeed_config(TrainConfig(**URIS, zero_stage=stage, use_gpu=True))["bf16"]["enabled"] is True
    assert "auto" not in str(ds)


# Join ----------------------------------------------------------------------------------------------


def test_training_rows_are_validated_with_the_row_named():
    row = _row(0, "synthetic/s0")
    assert example_from_row(row).video_id == "synthetic/s0"
    benchmark_keys = {k: v for k, v in row.items() if k != "video_id"} | {"dataset": "scannet", "scene_name": "scene0001_00"}
    assert example_from_row(benchmark_keys).video_id == "scannet/scene0001_00"
    with pytest.raises(ValueError, match="'q0'.*video_id"):
        example_from_row({k: v for k, v in row.items() if k != "video_id"})
    with pytest.raises(ValueError, match="'q0'.*<image>"):
        example_from_row({**row, "conversations": [{"from": "human", "value": "no video"}, {"from": "gpt", "value": "3"}]})
    with pytest.raises(ValueError, match="'q0'.*3 turns"):
        example_from_row({**row, "conversations": row["conversations"] + [{"from": "human", "value": "more"}]})


def test_read_training_examples_from_a_folder_and_s3(tmp_path, moto_s3):
    rows = [_row(i, f"synthetic/s{i % 2}") for i in range(4)]
    storage.write_jsonl(str(tmp_path / "qa" / "a.jsonl"), rows[:2])
    storage.write_json(str(tmp_path / "qa" / "b.json"), rows[2:])
    assert [e.id for e in read_training_examples(str(tmp_path / "qa"))] == ["q0", "q1", "q2", "q3"]
    storage.write_jsonl(f"{moto_s3}/qa.jsonl", rows)
    assert len(read_training_examples(f"{moto_s3}/qa.jsonl")) == 4
    storage.write_jsonl(str(tmp_path / "dup.jsonl"), rows + rows[:1])
    with pytest.raises(ValueError, match="duplicate.*'q0'"):
        read_training_examples(str(tmp_path / "dup.jsonl"))


def test_join_expands_each_token_row_into_its_conversations_and_records_the_rest():
    examples = [example_from_row(_row(i, f"synthetic/s{i % 3}")) for i in range(7)]
    plan = plan_join(examples, ["synthetic/s0", "synthetic/s1", "synthetic/unused"])
    assert {s["id"] for s in plan.skipped} == {"q2", "q5"}
    assert all("no token row" in s["reason"] for s in plan.skipped)
    camera = np.arange(3, dtype=np.float16).reshape(3, 1, 1, 1) * np.ones((3, 2, 1, 4), np.float16)  # (V, T, 1, C)
    batch = {"video_id": np.array(["synthetic/s1", "synthetic/unused", "synthetic/s0"], dtype=object),
             "camera_tokens": camera, "patch_tokens": camera.repeat(5, axis=2), "vision_features": camera}
    out = join_conversations(batch, plan.index())
    assert list(out["id"]) == ["q1", "q4", "q0", "q3", "q6"]
    assert list(out["video_id"]) == ["synthetic/s1"] * 2 + ["synthetic/s0"] * 3
    assert out["patch_tokens"].shape == (5, 2, 5, 4)
    np.testing.assert_array_equal(out["camera_tokens"][:, 0, 0, 0], [0, 0, 2, 2, 2])


@pytest.mark.parametrize("with_vision", [True, False])
def test_plan_training_join_refuses_unusable_inputs(tmp_path, with_vision):
    from vlm3r_core.tokens import EncoderInfo, VideoTokens, write_token_shard

    encoder = EncoderInfo(preset="tiny", checkpoint="", image_size=112, num_frames=2, vision_image_size=98 * with_vision)
    video = VideoTokens(video_id="synthetic/s0", frame_indices=np.arange(2), timestamps=np.zeros(2), duration_s=1.0,
                        camera_tokens=np.zeros((2, 1, 4)), patch_tokens=np.zeros((2, 3, 4)),
                        vision_features=np.zeros((2, 5, 6)) if with_vision else None)
    write_token_shard(str(tmp_path / "tokens" / "a.parquet"), [video], encoder)
    storage.write_jsonl(str(tmp_path / "qa.jsonl"), [_row(0, "synthetic/other")])
    match = "no training conversation.*has a token row" if with_vision else "no vision_features"
    with pytest.raises(ValueError, match=match):
        plan_training_join(str(tmp_path / "qa.jsonl"), str(tmp_path / "tokens"))


# Collator and DeepSpeed (single process, gloo) -------------------------------------------------------


def _token_rows(n: int, frames: list[int], seed: int = 0) -> dict[str, np.ndarray]:
    """A numpy batch of joined rows for the tiny preset; video i has ``frames[i]`` frames."""
    from vlm3r_core.presets import get_preset

    cfg = get_preset("tiny")
    grid = cfg.cut3r_image_size // cfg.cut3r.patch_size
    rng = np.random.default_rng(seed)

    def arrays(shape):
        out = np.empty(n, dtype=object)
        out[:] = [rng.normal(size=(t, *shape)).astype(np.float16) for t in frames]
        return out

    messages = [build_user_message(f"How many lamp(s) are in this room? {i}", timestamps=[0.0] * t, duration_s=1.0)
                for i, t in enumerate(frames)]
    return {"id": np.array([f"q{i}" for i in range(n)], dtype=object),
            "user_message": np.array(messages, dtype=object),
            "answer": np.array([str(1 + i % 3) for i in range(n)], dtype=object),
            "vision_features": arrays((cfg.vision_grid**2, cfg.vision_dim)),
            "camera_tokens": arrays((1, cfg.spatial_dim)),
            "patch_tokens": arrays((grid * grid, cfg.spatial_dim))}


@pytest.fixture(scope="module")
def processor():
    from vlm3r_core.presets import get_preset
    from vlm3r_core.vlm import Vlm3rProcessor

    return Vlm3rProcessor.from_config(get_preset("tiny"))


def test_collator_supervises_only_the_answer_and_pads_frames(processor):
    rows = _token_rows(3, frames=[2, 4, 3])
    batch = TrainCollator(processor, torch.float32)(rows)
    assert batch.features.vision_features.shape[:2] == (3, 4)
    assert batch.features.vision_features.dtype == torch.float32
    assert batch.features.frame_mask.sum(dim=1).tolist() == [2, 4, 3]
    assert batch.features.patch_tokens[0, 2:].abs().sum() == 0
    for b in range(3):
        supervised = batch.labels[b][batch.labels[b] != -100]
        assert processor.tokenizer.decode(supervised) == f"{rows['answer'][b]}<|im_end|>"
    text_tokens = int(batch.attention_mask.sum())
    assert batch.num_tokens == text_tokens - 3 + 9 * processor.config.tokens_per_frame
    with pytest.raises(ValueError, match="vision_features"):
        TrainCollator(processor, torch.float32)({k: v for k, v in rows.items() if k != "vision_features"})


@pytest.fixture(scope="module")
def single_process_group():
    """torch.distributed with one gloo rank, as DeepSpeed needs; one thread (2 shared cores)."""
    import deepspeed
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    saved_env = {k: os.environ.get(k) for k in env}
    threads = torch.get_num_threads()
    os.environ.update(env)
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    yield
    dist.destroy_process_group()
    torch.set_num_threads(threads)
    for k, v in saved_env.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_steps_lower_the_loss_and_checkpoints_restore_exactly(single_process_group, processor, tmp_path, stage):
    from vlm3r_core.training import (
        TrainState,
        build_engine,
        build_model_for_training,
        export_model,
        load_checkpoint,
        save_checkpoint,
        train_step,
    )
    from vlm3r_core.vlm import Vlm3rForConditionalGeneration

    cfg = TrainConfig(**URIS, zero_stage=stage, lr=3e-3, max_steps=8, warmup_ratio=0.0, micro_batch_size=4,
                      grad_accum_steps=2)
    collate = TrainCollator(processor, cfg.dtype)
    batches = [collate(_token_rows(4, [2, 2, 2, 2], seed=s)) for s in range(2)]
    engine = build_engine(cfg, build_model_for_training(cfg)[0])
    losses = [train_step(engine, batches, lr_at(cfg, s)).loss for s in range(6)]
    assert losses[-1] < 0.7 * losses[0]
    with pytest.raises(ValueError, match="needs 2 micro-batches"):
        train_step(engine, batches[:1], 1e-3)

    save_checkpoint(engine, TrainState(step=6, epoch=1, batch_in_epoch=3, samples_seen=48), str(tmp_path / "ckpt"))
    restored = build_engine(cfg, build_model_for_training(cfg)[0])
    state = load_checkpoint(restored, str(tmp_path / "ckpt"))
    assert (state.step, state.epoch, state.batch_in_epoch, state.samples_seen, state.resumed_from_step) == (6, 1, 3, 48, 6)
    # The next two steps (dropout off) match on the trained and the restored engine: weights and AdamW state.
    engine.module.train(False)
    restored.module.train(False)
    for step in (6, 7):
        expected = train_step(engine, batches, lr_at(cfg, step)).loss
        assert train_step(restored, batches, lr_at(cfg, step)).loss == pytest.approx(expected, rel=1e-5)

    export_model(engine, processor, str(tmp_path / "model"))
    loaded = Vlm3rForConditionalGeneration.from_pretrained(str(tmp_path / "model"))
    loaded.train(False)
    with torch.no_grad():
        b = batches[0]
        expected = engine.module(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels, features=b.features).loss
        got = loaded(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels, features=b.features).loss
    torch.testing.assert_close(got, expected)
