"""Training throughput: a step from precomputed token shards vs the same step running both frozen encoders.

Our training step reads CUT3R and SigLIP tokens from the token shards, so only the trainable part
runs (fusion, projector, LLM with LoRA). The reference runs SigLIP and CUT3R on the raw frames of
every sample in every epoch. Both variants here run the same DeepSpeed engine (ZeRO-2, one gloo
rank) over one model, the same prompts and the same optimiser step; they differ only in the model
input:

- tokens: :class:`vlm3r_core.train_data.TrainCollator` turns (conversation, token row) samples into
  a ``TrainBatch`` (what ``jobs/train.py`` does) and :func:`vlm3r_core.training.train_step` steps;
- frames: ``Vlm3rProcessor.preprocess_frames`` resizes uint8 frames for both encoders and the model
  runs SigLIP and CUT3R (no grad) before the same trainable path. Video decoding is not timed
  (the reference decodes in data-loader processes), so the ratio is a lower bound.

Training itself never builds the frozen encoders (:func:`vlm3r_core.training.build_model_for_training`);
the benchmark builds the model with them (the frames side needs them, the tokens side never calls
them), LoRA and the trainable parts exactly as training does. The two sides alternate step by step,
so a change in machine load hits both alike.

Prints samples per second per worker for both and their ratio::

    python benchmarks/bench_train.py --preset tiny --frames 32 --batch-size 2 --steps 10
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import numpy as np
import torch

from vlm3r_core.tokens import VideoTokens
from vlm3r_core.train_data import TrainCollator, TrainingExample
from vlm3r_core.training import (
    TrainConfig,
    build_engine,
    lr_at,
    seed_everything,
    train_step,
    training_model_config,
)
from vlm3r_core.vlm import Vlm3rForConditionalGeneration, Vlm3rProcessor


def _init_single_rank() -> None:
    import deepspeed

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    deepspeed.init_distributed(dist_backend="gloo")


def _samples(model_config, batch_size: int, frames: int, rng: np.random.Generator) -> list[tuple]:
    """Samples as training streams them: a conversation and its video's token row (fp16 arrays)."""
    grid = model_config.cut3r_image_size // model_config.cut3r.patch_size
    samples = []
    for b in range(batch_size):
        video = VideoTokens(
            video_id=f"bench/v{b}",
            frame_indices=np.arange(frames, dtype=np.int64),
            timestamps=0.5 * np.arange(frames, dtype=np.float64),
            duration_s=0.5 * frames,
            camera_tokens=rng.normal(size=(frames, 1, model_config.spatial_dim)).astype(np.float16),
            patch_tokens=rng.normal(size=(frames, grid * grid, model_config.spatial_dim)).astype(np.float16),
            vision_features=rng.normal(size=(frames, model_config.vision_grid**2, model_config.vision_dim)).astype(np.float16),
        )
        example = TrainingExample(id=f"q{b}", video_id=video.video_id, answer=str(rng.integers(1, 9)),
                                  question="How many chair(s) are in this room?")  # fmt: skip
        samples.append((example, video))
    return samples


def _frames_step(engine, processor, samples, videos, lr: float) -> None:
    """The reference's step: encoder pixels from raw frames, both frozen encoders, then the same update."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    messages = [example.render(processor, video) for example, video in samples]
    text = processor.build_batch(messages, answers=[example.answer for example, _ in samples])
    pixels = processor.preprocess_frames(videos)
    out = engine(input_ids=text.input_ids, attention_mask=text.attention_mask, labels=text.labels, pixels=pixels)
    engine.backward(out.loss)
    engine.step()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--frames", type=int, default=32, help="frames per video (T)")
    parser.add_argument("--frame-size", type=int, default=256, help="side of the raw square frames in pixels")
    parser.add_argument("--batch-size", type=int, default=2, help="videos per micro-batch")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a worker with 1 CPU)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    _init_single_rank()
    cfg = TrainConfig(qa_uri="-", tokens_uri="-", out_uri="-", preset=args.preset, micro_batch_size=args.batch_size,
                      max_steps=args.steps + 2, lr=1e-4)
    vlm_config = training_model_config(cfg)
    seed_everything(cfg.seed)
    model = Vlm3rForConditionalGeneration.from_config(vlm_config)  # every part: the frames side runs the encoders
    model.apply_lora()
    model.to(cfg.dtype).train()
    processor = Vlm3rProcessor.from_config(vlm_config)
    engine = build_engine(cfg, model)
    collate = TrainCollator(processor, cfg.dtype)
    rng = np.random.default_rng(0)
    rows = [_samples(model.config, args.batch_size, args.frames, rng) for _ in range(args.steps + 2)]
    videos = [[rng.integers(0, 256, size=(args.frames, args.frame_size, args.frame_size, 3), dtype=np.uint8)
               for _ in range(args.batch_size)] for _ in range(args.steps + 2)]

    steps = {
        "tokens": lambda i: train_step(engine, [collate(rows[i])], lr_at(cfg, i)),
        "frames": lambda i: _frames_step(engine, processor, rows[i], videos[i], lr_at(cfg, i)),
    }
    seconds = {name: 0.0 for name in steps}
    for i in range(args.steps + 2):  # interleaved, so a change in machine load hits both alike
        for name, step in steps.items():
            start = time.perf_counter()
            step(i)
            if i >= 2:  # the first two steps of each are warm-up
                seconds[name] += time.perf_counter() - start
    tokens_sps, frames_sps = (args.steps * args.batch_size / seconds[name] for name in ("tokens", "frames"))
    print(f"preset {args.preset}, T={args.frames} frames of {args.frame_size}px, batch {args.batch_size}, "
          f"{args.steps} steps, {args.threads} CPU thread(s)")
    print(f"token shards:   {tokens_sps:8.2f} samples/s per worker")
    print(f"frozen encoders: {frames_sps:7.2f} samples/s per worker")
    print(f"speed-up from precomputed tokens: {tokens_sps / frames_sps:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
