"""GRPO throughput against the supervised step on the same data, and the reward curve over N steps.

Both methods run what a ``jobs/train.py`` worker runs, on one gloo rank with the DeepSpeed ZeRO-2
engine of the job, on the same questions and token rows (``B`` of them per step):

- supervised (``--method sft``): ``train_step`` on the questions with their benchmark answers;
- GRPO rollouts: ``collect_rollouts``, ``G`` sampled answers per question, their log-probs under
  the sampling policy and the reference (adapter off), and their rewards (the official score);
- GRPO update: ``update_policy`` on those answers (one forward and backward per micro-batch of
  answers, one optimiser step); skipped, as in the job, when every group is degenerate.

Steps interleave (supervised step i, then GRPO step i), so a change in machine load hits both.
Prints samples per second per worker: supervised samples (a question and its answer), GRPO answers
sampled (rollout) and trained on (update), questions per second of a whole GRPO step, and each
against the supervised step. The GRPO steps also give the reward curve: the mean reward of every
step, overall and per question type, saved as a PNG (``--plot``).

On the synthetic scenes of ``make demo``, GRPO from its supervised model::

    python benchmarks/bench_rl.py --qa ./vlm3r-data/qa/benchmark/train \\
        --tokens ./vlm3r-data/tokens/tiny-112px-32f-vf --init-model ./vlm3r-data/runs/tiny/model \\
        --steps 40 --plot benchmarks/plots/bench_rl_reward.png

Without ``--qa``/``--tokens``: random token rows and toy counting and multiple-choice questions,
and, without ``--init-model``, GRPO starts from the supervised model after ``--toy-sft-steps``
steps on them (so that its answers are digits and letters, some right, some wrong).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch

from vlm3r_core import rl
from vlm3r_core.presets import get_preset
from vlm3r_core.prompting import answer_text
from vlm3r_core.rl.grpo import summarize_rollouts
from vlm3r_core.tokens import VideoTokens
from vlm3r_core.train_data import (
    MicroBatchStream,
    RewardRow,
    RolloutCollator,
    TrainCollator,
    TrainingData,
    TrainingExample,
    plan_reward_join,
)
from vlm3r_core.training import (
    GRPOStep,
    TrainConfig,
    build_engine,
    build_model_for_training,
    set_lr,
    single_process_group,
    train_step,
    training_model_config,
)

OBJECTS = ("chair", "table", "lamp", "sofa")


def toy_samples(preset: str, num_videos: int = 4, seed: int = 0) -> list[tuple[RewardRow, VideoTokens]]:
    """Random token rows at the preset's sizes, each with a counting and a multiple-choice question."""
    cfg = get_preset(preset)
    frames, grid = cfg.num_frames, cfg.cut3r_image_size // cfg.cut3r.patch_size
    rng = np.random.default_rng(seed)
    options = tuple(f"{letter}. {name}" for letter, name in zip("ABCD", OBJECTS, strict=True))
    samples = []
    for v in range(num_videos):
        video = VideoTokens(
            video_id=f"toy/{v}", frame_indices=np.arange(frames), timestamps=np.arange(frames) * 0.3,
            duration_s=0.3 * frames, camera_tokens=rng.normal(size=(frames, 1, cfg.spatial_dim)),
            patch_tokens=rng.normal(size=(frames, grid * grid, cfg.spatial_dim)),
            vision_features=rng.normal(size=(frames, cfg.vision_grid**2, cfg.vision_dim)),
        )  # fmt: skip
        letter = "ABCD"[v % 4]
        samples += [
            (RewardRow(f"count-{v}", video.video_id, "object_counting", f"How many {OBJECTS[v % 4]}(s) are in this room?",
                       (), str(1 + v % 4), None), video),
            (RewardRow(f"near-{v}", video.video_id, "object_rel_distance", "Which of these is closest to the bed?",
                       options, letter, letter), video),
        ]  # fmt: skip
    return samples


def question_batches(args: argparse.Namespace, cfg: TrainConfig) -> Callable[[], list[tuple[RewardRow, VideoTokens]]]:
    """The next ``--prompts`` questions with their token rows, each call: the benchmark rows with a
    computable reward (read as ``jobs/train.py --method grpo`` reads them), or the toy ones."""
    if args.qa is None:
        samples = itertools.cycle(toy_samples(args.preset))
        return lambda: [next(samples) for _ in range(args.prompts)]
    plan = plan_reward_join(args.qa, args.tokens, training_model_config(cfg))
    data = TrainingData.split(plan, world_size=1, batch_size=args.prompts)
    stream = MicroBatchStream(data, 0, list, 1, seed=0, shuffle_window=64)
    print(f"{len(plan.examples)} benchmark rows with a reward and tokens ({len(plan.skipped)} skipped)")
    return stream.next_samples


def supervised_example(row: RewardRow) -> TrainingExample:
    """The supervised sample of a benchmark row: its question with the benchmark's answer."""
    answer = answer_text(row.options, row.ground_truth, row.mc_answer or row.ground_truth)
    return TrainingExample(row.id, row.video_id, answer, question=row.question, options=row.options)


def moving_average(values: list[float], window: int) -> np.ndarray:
    return np.array([np.mean(values[max(0, i - window + 1) : i + 1]) for i in range(len(values))])


def save_plot(path: str, rewards: list[float], by_type: dict[str, list[float]], title: str, window: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(rewards) + 1)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, rewards, color="0.75", lw=1, label="mean reward of the step")
    ax.plot(steps, moving_average(rewards, window), color="k", lw=2, label=f"moving mean ({window} steps)")
    for qt, values in sorted(by_type.items()):
        points = [(s, v) for s, v in zip(steps, values, strict=True) if not np.isnan(v)]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, moving_average(list(ys), window), lw=1, label=qt)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward (accuracy + format weight x format)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--qa", help="benchmark rows (e.g. the split folder <root>/qa/benchmark/train); default: toy rows")
    parser.add_argument("--tokens", help="their token shards (<root>/tokens/<encoder>)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--init-model", help="the model GRPO starts from (the supervised run's model); default: base")
    parser.add_argument("--steps", type=int, default=40, help="steps of each method (the reward curve's length)")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--prompts", type=int, default=4, help="questions per step (B)")
    parser.add_argument("--group-size", type=int, default=8, help="answers sampled per question (G)")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--kl-beta", type=float, default=0.04)
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate of both methods")
    parser.add_argument("--micro-batch-size", type=int, default=2, help="questions per forward (both methods)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (a worker with 1 CPU)")
    parser.add_argument("--toy-sft-steps", type=int, default=20, help="toy rows: supervised steps before GRPO")
    parser.add_argument("--plot", help="where to save the reward curve (PNG)")
    args = parser.parse_args(argv)
    if (args.qa is None) != (args.tokens is None):
        parser.error("--qa and --tokens go together")
    if args.prompts % args.micro_batch_size or args.steps <= args.warmup:
        parser.error("--prompts must be a multiple of --micro-batch-size, and --steps more than --warmup")
    torch.set_num_threads(args.threads)
    with single_process_group(), tempfile.TemporaryDirectory() as tmp:
        return run(args, tmp)


def run(args: argparse.Namespace, tmp: str) -> int:
    common = dict(qa_uri=args.qa or "-", tokens_uri=args.tokens or "-", out_uri="-", preset=args.preset, lr=args.lr,
                  warmup_ratio=0.0, micro_batch_size=args.micro_batch_size,
                  grad_accum_steps=args.prompts // args.micro_batch_size, max_steps=args.steps)  # fmt: skip
    grpo = rl.GRPOConfig(group_size=args.group_size, max_new_tokens=args.max_new_tokens,
                         temperature=args.temperature, kl_beta=args.kl_beta)  # fmt: skip
    sft_cfg = TrainConfig(**common, method="sft")
    sft_model, sft_processor = build_model_for_training(sft_cfg)
    sft_engine, sft_collate = build_engine(sft_cfg, sft_model), TrainCollator(sft_processor, sft_cfg.dtype)

    def sft_step(questions) -> None:
        micro = [questions[k : k + args.micro_batch_size] for k in range(0, len(questions), args.micro_batch_size)]
        train_step(sft_engine, [sft_collate([(supervised_example(r), v) for r, v in m]) for m in micro], args.lr)

    init_model = args.init_model
    if args.qa is None and init_model is None and args.toy_sft_steps:
        warm_up = question_batches(args, sft_cfg)
        for _ in range(args.toy_sft_steps):
            sft_step(warm_up())
        init_model = f"{tmp}/sft"
        sft_model.save_pretrained(init_model, sft_processor)
    grpo_cfg = TrainConfig(**common, method="grpo", init_model=init_model, grpo=grpo)
    policy, processor = build_model_for_training(grpo_cfg)
    step = GRPOStep(grpo_cfg, build_engine(grpo_cfg, policy), processor)  # the job's pieces: its config and update
    collate = RolloutCollator(processor, grpo_cfg.dtype, grpo.answer_form)
    next_questions = question_batches(args, grpo_cfg)

    seconds, counts = defaultdict(float), defaultdict(int)
    rewards, by_type = [], defaultdict(list)
    for i in range(args.steps):  # interleaved
        questions = next_questions()
        timed = i >= args.warmup
        start = time.perf_counter()
        sft_step(questions)
        sft_done = time.perf_counter()
        inputs = collate(questions)
        set_lr(step.engine, args.lr)
        batch = rl.collect_rollouts(policy, processor, inputs.examples, inputs.features, step.config, step.backend)
        rollout_done = time.perf_counter()
        if batch.has_signal:
            rl.update_policy(policy, batch, step.config, step.update)
        update_done = time.perf_counter()
        if timed:
            seconds["sft"] += sft_done - start
            seconds["rollout"] += rollout_done - sft_done
            counts["sft"] += len(questions)
            counts["rollout"] += len(questions) * args.group_size
            if batch.has_signal:
                seconds["update"] += update_done - rollout_done
                counts["update"] += len(questions) * args.group_size
        summary = summarize_rollouts(batch, step.config)
        rewards.append(summary["reward_mean"])
        print(f"step {i + 1}/{args.steps}: reward {rewards[-1]:.3f}, supervised {sft_done - start:.2f} s, rollouts "
              f"{rollout_done - sft_done:.2f} s, update {update_done - rollout_done:.2f} s", flush=True)
        for qt in set(by_type) | set(summary["reward_by_type"]):
            by_type[qt] += [float("nan")] * (i - len(by_type[qt]))
            by_type[qt].append(summary["reward_by_type"].get(qt, {}).get("mean", float("nan")))

    sft = counts["sft"] / seconds["sft"]
    rollout = counts["rollout"] / seconds["rollout"]
    update = counts["update"] / seconds["update"] if counts["update"] else float("nan")
    grpo_step = counts["sft"] / (seconds["rollout"] + seconds["update"])
    print(f"preset {args.preset}, {args.steps} steps ({args.steps - args.warmup} timed) of B={args.prompts} questions, "
          f"G={args.group_size} answers of at most {args.max_new_tokens} tokens, {args.threads} CPU thread(s), "
          f"data: {args.qa or 'toy rows'}")  # fmt: skip
    print(f"supervised step:  {sft:8.2f} samples/s per worker")
    print(f"GRPO rollouts:    {rollout:8.2f} answers/s per worker, {rollout / sft:.2f}x the supervised samples/s")
    print(f"GRPO update:      {update:8.2f} answers/s per worker, {update / sft:.2f}x the supervised samples/s "
          f"({counts['update'] // (args.prompts * args.group_size)} of {args.steps - args.warmup} timed steps updated)")
    print(f"GRPO whole step:  {grpo_step:8.2f} questions/s per worker, {grpo_step / sft:.3f}x the supervised samples/s "
          f"(rollouts {seconds['rollout'] / (seconds['rollout'] + seconds['update']):.0%} of its time)")
    quarter = max(1, args.steps // 4)
    print(f"reward: first {quarter} steps {np.mean(rewards[:quarter]):.3f}, last {quarter} steps "
          f"{np.mean(rewards[-quarter:]):.3f} (per step: {' '.join(f'{r:.2f}' for r in rewards)})")
    if args.plot:
        start = args.init_model or (f"{args.toy_sft_steps} supervised steps" if init_model else f"{args.preset} (base)")
        title = (f"GRPO on {args.qa or 'toy rows'}, from {start}\n"
                 f"B={args.prompts}, G={args.group_size}, lr {args.lr:g}, T={args.temperature:g}, beta={args.kl_beta:g}")
        save_plot(args.plot, rewards, by_type, title, window=max(1, args.steps // 8))
        print(f"reward curve -> {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
