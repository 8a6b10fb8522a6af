"""Training library: config, schedule, DeepSpeed configs, the join and its refusals, worker shares,
the order of every epoch and its exact resume, the collator and its prompts (equal to evaluation's),
and real single-process DeepSpeed steps, checkpoints and export on the ``tiny`` preset (no Ray)."""

from __future__ import annotations

import math
import os

import numpy as np
import pyarrow as pa
import pytest
import torch

from vlm3r_core import storage
from vlm3r_core.presets import get_preset
from vlm3r_core.prompting import PromptConfig, build_conversation, build_user_message
from vlm3r_core.tokens import EncoderInfo, VideoTokens, write_token_shard
from vlm3r_core.train_data import (
    MicroBatchStream,
    RolloutCollator,
    TrainCollator,
    TrainingData,
    example_from_row,
    plan_join,
    plan_reward_join,
    plan_training_join,
    read_training_examples,
)
from vlm3r_core.training import (
    MetricsWindow,
    StepResult,
    TrainConfig,
    TrainState,
    deepspeed_config,
    lr_at,
    write_run_summary,
)

URIS = {"qa_uri": "qa.jsonl", "tokens_uri": "tokens", "out_uri": "out"}


def _row(i: int, video_id: str, answer: str = "3") -> dict:
    """A conversation as generate_qa writes it: question, options, answer, and the LLaVA form."""
    question = f"How many chair(s) are in this room? ({i})"
    message = build_user_message(question, timestamps=[0.0, 0.5], duration_s=1.0)
    return {"id": f"q{i}", "video_id": video_id, "video": f"{video_id}.mp4", "question": question, "options": [],
            "answer": answer, "conversations": build_conversation(message, answer), "question_type": "object_counting",
            "data_source": "synthetic"}


def _llava_row(i: int, video_id: str) -> dict:
    """A conversation from elsewhere: only the LLaVA form, its user turn rendered already."""
    return {k: v for k, v in _row(i, video_id).items() if k not in ("question", "options", "answer")}


def _video(video_id: str, frames: int, cfg, seed: int = 0, timestamps=None, duration_s: float = 1.0) -> VideoTokens:
    rng = np.random.default_rng(seed)
    grid = cfg.cut3r_image_size // cfg.cut3r.patch_size
    return VideoTokens(
        video_id=video_id, frame_indices=np.arange(frames),
        timestamps=np.linspace(0, duration_s, frames, endpoint=False) if timestamps is None else np.asarray(timestamps),
        duration_s=duration_s,
        camera_tokens=rng.normal(size=(frames, 1, cfg.spatial_dim)).astype(np.float16),
        patch_tokens=rng.normal(size=(frames, grid * grid, cfg.spatial_dim)).astype(np.float16),
        vision_features=rng.normal(size=(frames, cfg.vision_grid**2, cfg.vision_dim)).astype(np.float16),
    )


def _encoder(cfg, **overrides) -> EncoderInfo:
    fields = dict(preset=cfg.name, checkpoint="", image_size=cfg.cut3r_image_size, num_frames=cfg.num_frames,
                  vision_image_size=cfg.siglip_image_size)
    return EncoderInfo(**{**fields, **overrides})


# Config and schedule ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", [{"zero_stage": 1}, {"max_steps": 0}, {"lr": 0.0}, {"warmup_ratio": 1.0}, {"qa_uri": ""}, {"seed": -1},
            {"method": "ppo"}, {"init_model": "runs/sft/model"}]
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
    # SFT streams micro-batches; GRPO one batch of the step's prompts, sampled together.
    assert TrainConfig(**URIS, micro_batch_size=2, grad_accum_steps=3).stream_batches == (2, 3)
    assert TrainConfig(**URIS, micro_batch_size=2, grad_accum_steps=3, method="grpo").stream_batches == (6, 1)


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
    ex = example_from_row(row)
    assert (ex.video_id, ex.question, ex.options, ex.answer, ex.user_message) == (
        "synthetic/s0", row["question"], (), "3", None)
    mc = example_from_row({**row, "options": ["A. one", "B. two"], "answer": "B"})
    assert (mc.options, mc.answer) == (("A. one", "B. two"), "B")
    llava = example_from_row(_llava_row(0, "synthetic/s0"))
    assert (llava.question, llava.user_message, llava.answer) == (None, row["conversations"][0]["value"], "3")
    benchmark_keys = {k: v for k, v in row.items() if k != "video_id"} | {"dataset": "scannet", "scene_name": "scene0001_00"}
    assert example_from_row(benchmark_keys).video_id == "scannet/scene0001_00"
    with pytest.raises(ValueError, match="'q0'.*video_id"):
        example_from_row({k: v for k, v in row.items() if k != "video_id"})
    with pytest.raises(ValueError, match="'q0'.*non-empty answer"):
        example_from_row({**row, "answer": ""})
    with pytest.raises(ValueError, match="'q0'.*must not contain '<image>'"):
        example_from_row({**row, "question": "<image> how many?"})
    llava = _llava_row(0, "synthetic/s0")
    with pytest.raises(ValueError, match="'q0'.*<image>"):
        example_from_row({**llava, "conversations": [{"from": "human", "value": "no video"}, {"from": "gpt", "value": "3"}]})
    with pytest.raises(ValueError, match="'q0'.*3 turns"):
        example_from_row({**llava, "conversations": llava["conversations"] + [{"from": "human", "value": "more"}]})


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


def test_the_join_keeps_conversations_with_tokens_and_records_the_rest():
    examples = [example_from_row(_row(i, f"synthetic/s{i % 3}")) for i in range(7)]
    plan = plan_join(examples, {"synthetic/s0": "a.parquet", "synthetic/s1": "b.parquet", "synthetic/unused": "b.parquet"})
    assert {s["id"] for s in plan.skipped} == {"q2", "q5"}
    assert all("no token row" in s["reason"] for s in plan.skipped)
    assert [e.id for e in plan.examples] == ["q0", "q1", "q3", "q4", "q6"]
    assert plan.shards == {"synthetic/s0": "a.parquet", "synthetic/s1": "b.parquet"}


@pytest.mark.parametrize("with_vision", [True, False])
def test_plan_training_join_refuses_unusable_inputs(tmp_path, with_vision):
    cfg = get_preset("tiny", num_frames=2)
    video = _video("synthetic/s0", 2, cfg)
    if not with_vision:
        video = VideoTokens(**{**video.__dict__, "vision_features": None})
    write_token_shard(str(tmp_path / "tokens" / "a.parquet"), [video], _encoder(cfg, vision_image_size=98 * with_vision))
    storage.write_jsonl(str(tmp_path / "qa.jsonl"), [_row(0, "synthetic/other")])
    match = "no training conversation.*has a token row" if with_vision else "no vision_features"
    with pytest.raises(ValueError, match=match):
        plan_training_join(str(tmp_path / "qa.jsonl"), str(tmp_path / "tokens"), cfg)


@pytest.mark.parametrize(
    "field, value, named",
    [("preset", "vlm3r-7b", "preset 'vlm3r-7b' (training preset: 'tiny')"),
     ("image_size", 224, "CUT3R image size 224 (training preset: 112)"),
     ("vision_image_size", 56, "SigLIP image size 56 (training preset: 98)"),
     ("num_frames", 16, "frames per video 16 (training preset: 32)")],
)
def test_plan_training_join_refuses_shards_made_for_another_preset(tmp_path, field, value, named):
    cfg = get_preset("tiny")
    frames = value if field == "num_frames" else cfg.num_frames
    encoder = _encoder(cfg, **{field: value})
    write_token_shard(str(tmp_path / "tokens" / "a.parquet"), [_video("synthetic/s0", frames, cfg)], encoder)
    storage.write_jsonl(str(tmp_path / "qa.jsonl"), [_row(0, "synthetic/s0")])
    with pytest.raises(ValueError, match=f"{encoder.name}.*not made for the training preset 'tiny'") as e:
        plan_training_join(str(tmp_path / "qa.jsonl"), str(tmp_path / "tokens"), cfg)
    assert named in str(e.value) and str(e.value).count("training preset:") == 1


def test_grpo_join_keeps_rows_with_a_reward_and_tokens_and_records_the_others_with_the_reason(tmp_path):
    cfg = get_preset("tiny", num_frames=2)
    write_token_shard(str(tmp_path / "tokens" / "a.parquet"), [_video("synthetic/s0", 2, cfg)], _encoder(cfg))
    common = {"dataset": "synthetic", "scene_name": "s0", "question": "How many chair(s) are in this room?",
              "question_type": "object_counting", "options": None, "ground_truth": "3", "mc_answer": None}
    rows = [{**common, "id": "good"}, {**common, "id": "unknown", "question_type": "object_color"},
            {**common, "id": "no-gt", "ground_truth": ""}, {**common, "id": "zero", "ground_truth": "0"},
            {**common, "id": "elsewhere", "scene_name": "s9"},
            {**{k: v for k, v in common.items() if k not in ("dataset", "scene_name")}, "id": "no-video"}]  # fmt: skip
    split = tmp_path / "qa" / "benchmark" / "train"  # a split folder of shards, as generate_qa writes it
    storage.write_parquet(str(split / "part-00000.parquet"), pa.Table.from_pylist(rows[:3]))
    storage.write_parquet(str(split / "part-00001.parquet"), pa.Table.from_pylist(rows[3:]))
    plan = plan_reward_join(str(split), str(tmp_path / "tokens"), cfg)
    assert [(e.id, e.video_id, e.options) for e in plan.examples] == [("good", "synthetic/s0", ())]
    reasons = {s["id"]: s["reason"] for s in plan.skipped}
    assert reasons["unknown"].startswith("unknown question_type 'object_color'") and reasons["no-gt"] == "no ground_truth"
    assert "not a positive number" in reasons["zero"] and "no token row" in reasons["elsewhere"]
    assert reasons["no-video"] == "misses dataset, scene_name"
    assert {s["id"]: s["video_id"] for s in plan.skipped} == {"unknown": "synthetic/s0", "no-gt": "synthetic/s0",
                                                              "zero": "synthetic/s0", "no-video": None,
                                                              "elsewhere": "synthetic/s9"}  # fmt: skip
    # Conversations are not benchmark rows: nothing has a reward, and the message says what GRPO reads.
    storage.write_jsonl(str(tmp_path / "qa.jsonl"), [_row(0, "synthetic/s0")])
    with pytest.raises(ValueError, match=r"no row .* computable reward .*misses dataset, scene_name, ground_truth.*qa/benchmark/train\b"):
        plan_reward_join(str(tmp_path / "qa.jsonl"), str(tmp_path / "tokens"), cfg)


def test_plan_training_join_refuses_questions_made_for_another_frame_count(tmp_path, moto_s3):
    cfg = get_preset("tiny")
    for root in (str(tmp_path), f"{moto_s3}/data"):
        write_token_shard(storage.join(root, "tokens", "a.parquet"), [_video("synthetic/s0", 32, cfg)], _encoder(cfg))
        qa = storage.join(root, "qa", "conversations", "train.jsonl")
        storage.write_jsonl(qa, [_row(0, "synthetic/s0")])
        storage.write_json(storage.join(root, "qa", "manifest.json"), {"preset": "tiny", "num_frames": 32})
        assert len(plan_training_join(qa, storage.join(root, "tokens"), cfg).examples) == 1
        storage.write_json(storage.join(root, "qa", "manifest.json"), {"preset": "tiny", "num_frames": 16})
        with pytest.raises(ValueError, match=r"generated for 16 frames per video .*manifest.json.*'tiny' samples 32"):
            plan_training_join(qa, storage.join(root, "tokens"), cfg)


# Worker shares, the order of an epoch and exact resume ---------------------------------------------------


def _plan(counts: dict[str, int]):
    """A join plan with ``counts[video]`` conversations per video (ids numbered across videos)."""
    videos = [v for v, k in counts.items() for _ in range(k)]
    examples = [example_from_row(_row(n, v)) for n, v in enumerate(videos)]
    return plan_join(examples, {v: f"shard-{v}" for v in counts})


def test_videos_are_split_over_workers_balanced_by_conversations_and_the_same_every_time():
    counts = {"v0": 10, "v1": 7, "v2": 6, "v3": 4, "v4": 3, "v5": 1}
    data = TrainingData.split(_plan(counts), world_size=2, batch_size=3)
    assert data.ranks == (("v0", "v3", "v5"), ("v1", "v2", "v4"))  # 15 and 16 conversations
    assert data.batches_per_epoch == 15 // 3
    plan = _plan(counts)
    assert TrainingData.split(plan_join(plan.examples[::-1], plan.shards), 2, 3) == data  # file order is irrelevant
    assert sorted(v for r in TrainingData.split(_plan(counts), 4, 1).ranks for v in r) == sorted(counts)
    with pytest.raises(ValueError, match=r"worker 3 of 5 gets 4 conversations \(1 videos of 6\).*micro_batch_size=5"):
        TrainingData.split(_plan(counts), world_size=5, batch_size=5)


def test_epoch_order_depends_on_seed_epoch_and_rank_and_shuffles_within_windows():
    counts = {f"v{i}": 5 for i in range(8)}
    data = TrainingData.split(_plan(counts), world_size=2, batch_size=4)
    order = data.epoch_samples(0, epoch=0, seed=1, shuffle_window=10)
    assert len(order) == data.batches_per_epoch * 4 == 20
    assert order == data.epoch_samples(0, epoch=0, seed=1, shuffle_window=10)
    assert order != data.epoch_samples(0, epoch=1, seed=1, shuffle_window=10)
    assert order != data.epoch_samples(0, epoch=0, seed=2, shuffle_window=10)
    assert {v for v, _ in order} == set(data.ranks[0]) and not {v for v, _ in order} & set(data.ranks[1])
    windows = [{v for v, _ in order[i : i + 10]} for i in (0, 10)]  # two videos of 5 per window of 10
    assert all(len(w) == 2 for w in windows) and not windows[0] & windows[1]
    assert data.epoch_samples(0, epoch=3, seed=1, shuffle_window=0) == [(v, i) for v in data.ranks[0] for i in range(5)]


def test_a_stream_resumed_at_its_position_takes_the_same_batches_and_reads_only_what_it_needs():
    counts = {f"v{i}": 3 + i for i in range(6)}
    data = TrainingData.split(_plan(counts), world_size=2, batch_size=2)
    reads, cfg = [], get_preset("tiny")

    def load(shard, video_id):
        reads.append(video_id)
        assert shard == f"shard-{video_id}"
        return _video(video_id, 1, cfg)

    def stream(position=(0, 0)):
        return MicroBatchStream(data, 1, lambda s: [(ex.id, v.video_id) for ex, v in s], grad_accum_steps=3, seed=4,
                                shuffle_window=5, position=position, load=load)

    first = stream()
    steps = [first.next_step() for _ in range(7)]  # 21 micro-batches: more than one epoch
    assert data.batches_per_epoch == 8 and first.position == (2, 5)
    epoch_reads = reads[: len(data.ranks[1])]
    assert sorted(epoch_reads) == sorted(data.ranks[1])  # every video read once per epoch
    assert len(first._reader.loaded) <= 3  # a window's videos plus what is read ahead
    first.close()
    for k in (1, 2, 5):  # a checkpoint after step k holds the position of its last micro-batch
        reads.clear()
        resumed = stream(position=(k * 3 // 8, k * 3 % 8))
        assert [resumed.next_step() for _ in range(7 - k)] == steps[k:]
        assert set(reads) == {v for step in steps[k:] for batch in step for _, v in batch}  # none of earlier batches
        resumed.close()
    assert stream(position=(0, 8)).next_step()[0] == stream(position=(1, 0)).next_step()[0]


# Collator and prompts ---------------------------------------------------------------------------------------------


def _samples(processor, frames: list[int], seed: int = 0):
    """(example, video) samples for the tiny preset; video i has ``frames[i]`` frames."""
    out = []
    for i, t in enumerate(frames):
        row = _row(i, f"synthetic/s{i}", answer=str(1 + i % 3)) if i % 2 == 0 else _llava_row(i, f"synthetic/s{i}")
        out.append((example_from_row(row), _video(f"synthetic/s{i}", t, processor.config, seed=seed + i)))
    return out


@pytest.fixture(scope="module")
def processor():
    from vlm3r_core.vlm import Vlm3rProcessor

    return Vlm3rProcessor.from_config(get_preset("tiny"))


def test_collator_supervises_only_the_answer_and_pads_frames(processor):
    samples = _samples(processor, frames=[2, 4, 3])
    batch = TrainCollator(processor, torch.float32)(samples)
    assert batch.features.vision_features.shape[:2] == (3, 4)
    assert batch.features.vision_features.dtype == torch.float32
    assert batch.features.frame_mask.sum(dim=1).tolist() == [2, 4, 3]
    assert batch.features.patch_tokens[0, 2:].abs().sum() == 0
    for b, (ex, _) in enumerate(samples):
        supervised = batch.labels[b][batch.labels[b] != -100]
        assert processor.tokenizer.decode(supervised) == f"{ex.answer}<|im_end|>"
    text_tokens = int(batch.attention_mask.sum())
    assert batch.num_tokens == text_tokens - 3 + 9 * processor.config.tokens_per_frame
    no_vision = [(ex, VideoTokens(**{**v.__dict__, "vision_features": None})) for ex, v in samples]
    with pytest.raises(ValueError, match="'synthetic/s0' .*'q0'.*vision_features"):
        TrainCollator(processor, torch.float32)(no_vision)


def test_training_prompts_are_the_evaluation_prompts_token_for_token(tmp_path, monkeypatch):
    """The same question about the same token row gives the same prompt ids in training and in
    evaluation (and serving, which makes the same ``processor.user_message`` call), with a
    non-default PromptConfig and frame times that differ from the ones the QA data was made with."""
    from datagen.qa import conversation
    from vlm3r_core.inference import AnswerQuestions
    from vlm3r_core.vlm import Vlm3rForConditionalGeneration, Vlm3rProcessor

    prompt = PromptConfig(pre_prompt="Watch the room closely.", system_prompt="You measure rooms.")
    cfg = get_preset("tiny", num_frames=4, prompt=prompt)
    model_dir = str(tmp_path / "model")
    Vlm3rForConditionalGeneration.from_config(cfg).save_pretrained(model_dir, Vlm3rProcessor.from_config(cfg))
    tokens = str(tmp_path / "tokens")
    video = _video("synthetic/s0", 4, cfg, timestamps=[0.0, 0.37, 1.2, 1.9], duration_s=2.5)
    write_token_shard(f"{tokens}/a.parquet", [video], _encoder(cfg))
    common = {"dataset": "synthetic", "scene_name": "s0", "video": "v.mp4", "frame_indices": []}
    benchmark = [
        {**common, "id": "q-numeric", "question_type": "room_size_estimation", "options": [],
         "question": "What is the size of this room (in square meters)?", "ground_truth": "48.0", "mc_answer": None},
        {**common, "id": "q-choice", "question_type": "object_rel_distance", "options": ["A. bed", "B. sofa"],
         "question": "Which is closer to the lamp?", "ground_truth": "B", "mc_answer": "B"},
    ]
    qa = str(tmp_path / "qa.jsonl")  # made with the scene's own frame times and the default prompt
    storage.write_jsonl(qa, [conversation(r, [0.0, 0.5, 1.0, 1.5], 2.0, PromptConfig()) for r in benchmark])

    trained = Vlm3rProcessor.from_config(cfg)
    data = TrainingData.split(plan_training_join(qa, tokens, cfg), world_size=1, batch_size=2)
    stream = MicroBatchStream(data, 0, TrainCollator(trained, torch.float32), 1, seed=0, shuffle_window=0)
    batch = stream.next_step()[0]
    stream.close()
    ids = [ex.id for ex in data.examples["synthetic/s0"]]  # the order of the epoch without shuffling
    training = {i: batch.input_ids[b][(batch.labels[b] == -100) & (batch.attention_mask[b] == 1)].tolist()
                for b, i in enumerate(ids)}

    answerer, seen = AnswerQuestions(model_dir, tokens=tokens), []

    def generate(input_ids, attention_mask, features, max_new_tokens, **sampling):
        seen.extend(row[mask == 1].tolist() for row, mask in zip(input_ids, attention_mask, strict=True))
        return torch.zeros((len(input_ids), 1), dtype=torch.long)

    monkeypatch.setattr(answerer.model, "generate", generate)
    answerer.answer([{**r, "video_id": "synthetic/s0"} for r in benchmark])
    assert dict(zip((r["id"] for r in benchmark), seen, strict=True)) == training

    # GRPO samples its answers to the same prompts, made from the benchmark rows themselves.
    storage.write_jsonl(str(tmp_path / "bench.jsonl"), benchmark)
    data = TrainingData.split(plan_reward_join(str(tmp_path / "bench.jsonl"), tokens, cfg), world_size=1, batch_size=2)
    stream = MicroBatchStream(data, 0, RolloutCollator(trained, torch.float32, "plain"), 1, seed=0, shuffle_window=0)
    (inputs,) = stream.next_step()
    stream.close()
    prompts = trained.build_batch([ex.user_message for ex in inputs.examples])
    assert {ex.id: prompts.input_ids[b][prompts.attention_mask[b] == 1].tolist()
            for b, ex in enumerate(inputs.examples)} == training  # fmt: skip
    text = trained.tokenizer.decode(training["q-choice"])
    assert "You measure rooms." in text and "Watch the room closely.\nWhich is closer" in text
    assert "These frames are located at 0.00s,0.37s,1.20s,1.90s." in text and "1.50s" not in text


@pytest.fixture(scope="module")
def single_process_group():
    """torch.distributed with one gloo rank, as DeepSpeed needs; one thread (2 shared cores)."""
    from vlm3r_core.training import single_process_group

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with single_process_group():
        yield
    torch.set_num_threads(threads)


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
    batches = [collate(_samples(processor, [2, 2, 2, 2], seed=s)) for s in range(2)]
    engine = build_engine(cfg, build_model_for_training(cfg)[0])
    losses = [train_step(engine, batches, lr_at(cfg, s)).loss for s in range(6)]
    assert losses[-1] < 0.7 * losses[0]
    with pytest.raises(ValueError, match="needs 2 micro-batches"):
        train_step(engine, batches[:1], 1e-3)

    save_checkpoint(engine, TrainState(step=6, epoch=1, batch_in_epoch=3, samples_seen=48), str(tmp_path / "ckpt"))
    expected = [train_step(engine, batches, lr_at(cfg, step)).loss for step in (6, 7)]
    restored = build_engine(cfg, build_model_for_training(cfg)[0])  # seeds the random state afresh
    state = load_checkpoint(restored, str(tmp_path / "ckpt"))
    assert (state.step, state.epoch, state.batch_in_epoch, state.samples_seen, state.resumed_from_step) == (6, 1, 3, 48, 6)
    # The next two steps, dropout on, are bit-identical: weights, AdamW state and random state restored.
    assert [train_step(restored, batches, lr_at(cfg, step)).loss for step in (6, 7)] == expected

    export_model(engine, processor, str(tmp_path / "model"))
    loaded = Vlm3rForConditionalGeneration.from_pretrained(str(tmp_path / "model"))
    loaded.train(False)
    engine.module.train(False)
    with torch.no_grad():
        b = batches[0]
        expected = engine.module(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels, features=b.features).loss
        got = loaded(input_ids=b.input_ids, attention_mask=b.attention_mask, labels=b.labels, features=b.features).loss
    torch.testing.assert_close(got, expected)


def test_grpo_metrics_of_every_step_go_to_the_log_a_progress_line_and_the_summary(tmp_path, caplog):
    cfg = TrainConfig(qa_uri="q", tokens_uri="t", out_uri=str(tmp_path), method="grpo", max_steps=2, log_every=1)
    window, state = MetricsWindow(cfg, torch.device("cpu")), TrainState()
    details = [  # two steps of rl.GRPOStepResult.to_dict(): counting in both, multiple choice in the second only
        {"loss": 0.5, "kl": 0.01, "clip_fraction": 0.0, "reward_mean": 0.5, "reward_std": 0.25, "accuracy_mean": 0.3,
         "format_mean": 0.4, "mean_completion_tokens": 3.0, "degenerate_fraction": 0.5, "num_groups": 2,
         "updated": True, "grad_norm": 1.0, "reward/object_counting/mean": 0.5, "reward/object_counting/std": 0.25,
         "reward/object_counting/count": 8},
        {"loss": 0.1, "kl": 0.03, "clip_fraction": 0.0, "reward_mean": 1.0, "reward_std": 0.5, "accuracy_mean": 0.7,
         "format_mean": 0.6, "mean_completion_tokens": 5.0, "degenerate_fraction": 0.0, "num_groups": 2,
         "updated": True, "grad_norm": 2.0, "reward/object_counting/mean": 0.75, "reward/object_counting/std": 0.1,
         "reward/object_counting/count": 4, "reward/object_rel_distance/mean": 1.25,
         "reward/object_rel_distance/std": 0.2, "reward/object_rel_distance/count": 4},
    ]  # fmt: skip
    with caplog.at_level("INFO", logger="vlm3r_core.training"):
        for d in details:
            result = StepResult(loss=d["loss"], num_samples=2, num_tokens=12, grad_norm=d["grad_norm"], details=d)
            state.advance(result, (0, state.step + 1), world_size=1)
            window.add(result, state)
        metrics = window.metrics(state)
    assert "[train] step 2/2 loss 0.1000" in caplog.text
    assert ("reward 1.000 (std 0.500; object_counting 0.750 ± 0.100, object_rel_distance 1.250 ± 0.200) kl 0.03 "
            "answer 5.0 tokens degenerate 0.00 clip 0.000") in caplog.text  # fmt: skip
    # The window: means of the steps, per question type weighted by its answers (8 at 0.5, 4 at 0.75).
    assert metrics["reward_mean"] == 0.75 and metrics["kl"] == 0.02 and metrics["degenerate_fraction"] == 0.25
    assert metrics["reward/object_counting/mean"] == pytest.approx((8 * 0.5 + 4 * 0.75) / 12)
    assert (metrics["reward/object_counting/count"], metrics["reward/object_rel_distance/count"]) == (12, 4)
    (row,) = storage.read_jsonl(cfg.metrics_uri)
    assert row["step"] == 2 and row["steps"] == [{"step": 1, **details[0]}, {"step": 2, **details[1]}]
    write_run_summary(cfg, state, metrics)
    summary = storage.read_json(cfg.summary_uri)
    assert summary["method"] == "grpo" and summary["reward_mean"] == 0.75 and summary["clip_fraction"] == 0.0
    assert summary["reward/object_rel_distance/mean"] == 1.25 and summary["mean_completion_tokens"] == 4.0


def test_deepspeed_communication_starts_without_its_inference_only_shm_op(single_process_group):
    """The CPU shared-memory op serves only tensor-parallel inference; it is neither built (about a
    minute on a fresh machine) nor loaded (seconds per worker) for training."""
    import deepspeed.comm.comm as ds_comm

    assert ds_comm.cdb is not None and ds_comm.cdb.shm_comm_op is None
    import deepspeed

    assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is False
