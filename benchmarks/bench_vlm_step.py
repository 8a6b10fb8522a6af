"""Training-step time from precomputed token features vs from raw frames (the model runs SigLIP + CUT3R).

Both paths compute the same loss (tests/vlm3r_core/vlm/test_model.py checks equality); the ratio
says how much a step saves when training reads token shards instead of encoding frames.

    python benchmarks/bench_vlm_step.py --preset tiny --frames 32 --steps 5 [--device cuda]

Prints one line per path (seconds per step, the two paths alternating step by step) and
``speedup = raw / precomputed``.
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


def _seconds_per_step(model, batch, optimizer, steps: int, sides: dict[str, dict]) -> dict[str, float]:
    """Mean seconds per step of each side, the sides alternating step by step (after one warm-up
    step each), so a change in machine load hits both alike."""

    def step(inputs: dict) -> float:
        start = time.perf_counter()
        loss = model(batch.input_ids, batch.attention_mask, batch.labels, **inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for inputs in sides.values():
        step(inputs)  # warm-up
    seconds = {name: 0.0 for name in sides}
    for _ in range(steps):
        for name, inputs in sides.items():
            seconds[name] += step(inputs)
    return {name: total / steps for name, total in seconds.items()}


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

    times = _seconds_per_step(model, batch, optimizer, args.steps, {"raw": {"pixels": pixels}, "pre": {"features": features}})
    raw, pre = times["raw"], times["pre"]
    print(f"preset={args.preset} frames={args.frames} device={args.device} steps={args.steps}")
    print(f"raw frames:          {raw:.3f} s/step")
    print(f"precomputed tokens:  {pre:.3f} s/step")
    print(f"speedup = raw / precomputed = {raw / pre:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
