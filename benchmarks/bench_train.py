"""Training throughput: a step from precomputed token shards vs the same step running both frozen encoders.

Our training step reads CUT3R and SigLIP tokens from the token shards, so only the trainable part
runs (fusion, projector, LLM with LoRA). The reference runs SigLIP and CUT3R on the raw frames of
every sample in every epoch. Both variants here run the same DeepSpeed engine (ZeRO-2, one gloo
rank), the same prompts and the same optimiser step; they differ only in the model input:

- tokens: the collator pads fp16 token arrays into ``VideoFeatures`` (what ``jobs/train.py`` does);
- frames: ``Vlm3rProcessor.preprocess_frames`` resizes uint8 frames for both encoders and the model
  runs SigLIP and CUT3R (no grad) before the same trainable path. Video decoding is not timed
  (the reference decodes in data-loader processes), so the ratio is a lower bound.

Prints samples per second per worker for both and their ratio::

    python benchmarks/bench_train.py --preset tiny --frames 32 --batch-size 2 --steps 10
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from vlm3r_core.prompting import build_user_message
from vlm3r_core.train_data import TrainCollator
from vlm3r_core.training import (
    TrainConfig,
    build_engine,
    build_model_for_training,
    lr_at,
    single_process_group,
    train_step,
)


def _rows(model_config, batch_size: int, frames: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Joined rows as the token path gets them from Ray Data: prompts plus fp16 token arrays."""
    grid = model_config.cut3r_image_size // model_config.cut3r.patch_size
    timestamps = [0.5 * t for t in range(frames)]
    message = build_user_message("How many chair(s) are in this room?", timestamps=timestamps, duration_s=0.5 * frames)

    def tokens(*shape):
        out = np.empty(batch_size, dtype=object)
        out[:] = [rng.normal(size=(frames, *shape)).astype(np.float16) for _ in range(batch_size)]
        return out

    return {"user_message": np.array([message] * batch_size, dtype=object),
            "answer": np.array([str(rng.integers(1, 9)) for _ in range(batch_size)], dtype=object),
            "vision_features": tokens(model_config.vision_grid**2, model_config.vision_dim),
            "camera_tokens": tokens(1, model_config.spatial_dim),
            "patch_tokens": tokens(grid * grid, model_config.spatial_dim)}


def _frames_step(engine, processor, rows, videos, lr: float) -> None:
    """The reference's step: encoder pixels from raw frames, both frozen encoders, then the same update."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr
    text = processor.build_batch(list(rows["user_message"]), answers=list(rows["answer"]))
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
    with single_process_group():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    cfg = TrainConfig(qa_uri="-", tokens_uri="-", out_uri="-", preset=args.preset, micro_batch_size=args.batch_size,
                      max_steps=args.steps + 2, lr=1e-4)
    model, processor = build_model_for_training(cfg)
    engine = build_engine(cfg, model)
    collate = TrainCollator(processor, cfg.dtype)
    rng = np.random.default_rng(0)
    rows = [_rows(model.config, args.batch_size, args.frames, rng) for _ in range(args.steps + 2)]
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
