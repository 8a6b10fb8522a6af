"""Smoke test of benchmarks/bench_rl.py at minimal size: it runs both methods, prints measured
throughput with its ratios to the supervised step, and saves the reward curve."""

from __future__ import annotations

import re

from benchmarks import bench_rl


def test_bench_rl_prints_throughput_ratios_and_saves_the_reward_curve(tmp_path, capsys):
    plot = tmp_path / "reward.png"
    argv = ["--steps", "4", "--warmup", "1", "--prompts", "2", "--micro-batch-size", "1", "--group-size", "4",
            "--max-new-tokens", "3", "--lr", "3e-3", "--toy-sft-steps", "20", "--plot", str(plot)]  # fmt: skip
    assert bench_rl.main(argv) == 0
    out = capsys.readouterr().out
    number = r"([\d.]+|nan)"
    sft = float(re.search(rf"supervised step: +{number} samples/s per worker", out).group(1))
    rollout, ratio = map(float, re.search(rf"GRPO rollouts: +{number} answers/s per worker, {number}x", out).groups())
    assert sft > 0 and rollout > 0 and abs(ratio - rollout / sft) <= 0.01 * ratio + 0.01
    assert re.search(rf"GRPO update: +{number} answers/s per worker, {number}x .*\(\d of 3 timed steps updated\)", out)
    assert re.search(r"GRPO whole step: +[\d.]+ questions/s per worker, [\d.]+x the supervised samples/s", out)
    rewards = re.search(r"reward: first 1 steps ([\d.]+), last 1 steps ([\d.]+) \(per step: ((?:[\d.]+ ?){4})\)", out)
    assert rewards and len(rewards.group(3).split()) == 4
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
