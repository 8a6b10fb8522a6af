"""Training-step time from precomputed token features vs from raw frames (the model runs SigLIP + CUT3R).

Both paths compute the same loss (tests/vlm3r_core/vlm/test_model.py checks equality); the ratio
says how much a step saves when training reads token shards instead of encoding frames.

    python benchmarks/bench_vlm_step.py --preset tiny --frames 32 --steps 5 [--device cuda]

Prints one line per path (seconds per step) and ``speedup = raw / precomputed``.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from vlm3r_core import prompting
from vlm3r_core.presets import get_preset
from vlm3r_core.vlm import Vlm3rForConditionalGeneration, Vlm3rProcessor


def _seconds_per_step(model, batch, optimizer, steps: int, **inputs) -> float:
    def step():
        loss = model(batch.input_ids, batch.attention_mask, batch.labels, **inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    config = get_preset(args.preset)
    model = Vlm3rForConditionalGeneration.from_config(config, device=args.device)
    model.apply_lora()
    model.train()
    processor = Vlm3rProcessor.from_config(config)
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, 240, 320, 3), dtype=np.uint8)
    pixels = processor.preprocess_frames([frames]).to(args.device)
    features = model.encode_frames(pixels)
    times = [i * 0.5 for i in range(args.frames)]
    message = prompting.build_user_message(
        "How many chair(s) are in this room?", timestamps=times, duration_s=args.frames * 0.5
    )
    batch = processor.build_batch([message], ["3"])
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=1e-5)

    raw = _seconds_per_step(model, batch, optimizer, args.steps, pixels=pixels)
    pre = _seconds_per_step(model, batch, optimizer, args.steps, features=features)
    print(f"preset={args.preset} frames={args.frames} device={args.device} steps={args.steps}")
    print(f"raw frames:          {raw:.3f} s/step")
    print(f"precomputed tokens:  {pre:.3f} s/step")
    print(f"speedup = raw / precomputed = {raw / pre:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
