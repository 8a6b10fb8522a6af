"""``make demo``: the whole pipeline on embedded defaults, legibly.

    python -m jobs.demo --data ./vlm3r-data

Runs every stage as its own job (the same commands the README gives) on a local Ray, the local
folder ``--data``, synthetic scenes and the ``tiny`` preset. Each stage prints a header, one
progress bar and its job's one-line summary; everything else the stage prints (Ray, Ray Data and
Ray Train chatter, library warnings) goes to ``<data>/logs/<stage>.log``. The demo ends with one
summary: what each stage wrote and how long it took, the evaluation table beside the chance and
frequency baselines, an answer next to its ground truth, and the commands to try next.

Every stage resumes: a second run skips what is written and re-evaluates. A stage that fails
stops the demo with its log's last lines and exit code 1.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vlm3r_core import storage
from vlm3r_core.cli import run_job
from vlm3r_core.evaluation import read_benchmark

ROOT = Path(__file__).resolve().parents[1]
TOKENS = "tokens/tiny-112px-32f-vf"
_SUMMARY = re.compile(r"^\[[a-z_]+\] ")  # a job's summary line: "[generate_qa] 8 done, ..."
_PROGRESS = re.compile(r"(\d+)/(\d+) \[|\bstep (\d+)/(\d+)\b")  # a tqdm bar "12/40 [" or "[train] step 10/200"


@dataclass(frozen=True)
class DemoConfig:
    """The demo's sizes.

    Args:
        data: the data root every stage reads and writes (a local folder).
        num_scenes: synthetic rooms (a quarter go to the val split).
        train_steps: supervised training steps.
        grpo_steps: GRPO steps after them.
        video: the val scene whose video the served model is asked about.
    """

    data: str = "./vlm3r-data"
    num_scenes: int = 8
    train_steps: int = 200
    grpo_steps: int = 6
    video: str = "syn-000003"

    def __post_init__(self):
        if self.num_scenes < 4:
            raise ValueError(f"num_scenes must be >= 4 (the demo needs train and val scenes), got {self.num_scenes}")
        if self.train_steps < 1 or self.grpo_steps < 1:
            raise ValueError(f"train_steps and grpo_steps must be >= 1, got {self.train_steps}, {self.grpo_steps}")
        if storage.is_remote(self.data):
            raise ValueError(f"data must be a local folder (the demo reads its outputs back), got {self.data!r}")


@dataclass(frozen=True)
class Stage:
    """One stage: its log name, the header, the command, and what it wrote (for the summary)."""

    name: str
    title: str
    argv: list[str]
    wrote: Callable[[DemoConfig], str] = lambda cfg: ""
    outputs: tuple[str, ...] = ()  # folders under the data root, for the sizes in the summary


@dataclass
class StageResult:
    stage: Stage
    seconds: float
    summary: str
    log: Path
    extra: dict = field(default_factory=dict)


def stages(cfg: DemoConfig) -> list[Stage]:
    d, py = cfg.data, sys.executable
    tokens = f"{d}/{TOKENS}"
    bench = f"{d}/qa/benchmark/val"
    return [
        Stage("make_scenes", "synthetic scenes: procedural rooms, rendered hand-held videos",
              [py, "jobs/make_scenes.py", "--num-scenes", str(cfg.num_scenes), "--val-fraction", "0.25", "--out", d, "--seed", "0"],
              outputs=("scenes",)),
        Stage("generate_qa", "questions: the 13 VSI-Bench / VSTI-Bench families from each scene graph",
              [py, "jobs/generate_qa.py", "--scenes", d, "--out", d, "--seed", "0"], outputs=("qa",)),
        Stage("precompute_tokens", "tokens: CUT3R and SigLIP features of every video, into token shards",
              [py, "jobs/precompute_tokens.py", "--scenes", d, "--out", d, "--preset", "tiny", "--with-vision-features"],
              outputs=("tokens",)),
        Stage("train", f"training: {cfg.train_steps} steps of LoRA + fusion + projector, 2 workers, DeepSpeed ZeRO-2",
              [py, "jobs/train.py", "--qa", f"{d}/qa/conversations/train", "--tokens", tokens, "--out", f"{d}/runs/tiny",
               "--preset", "tiny", "--num-workers", "2", "--cpus-per-worker", "0.5", "--max-steps", str(cfg.train_steps),
               "--micro-batch-size", "4", "--lr", "1e-3", "--checkpoint-every", "100"],
              outputs=("runs/tiny",)),
        Stage("evaluate_untrained", "evaluation of the untrained model on the val questions",
              [py, "jobs/evaluate.py", "--model", "tiny", "--benchmark", bench, "--tokens", tokens, "--out", f"{d}/eval/untrained",
               "--title", "untrained tiny"], outputs=("eval/untrained",)),
        Stage("evaluate_trained", "evaluation of the trained model, beside the untrained one",
              [py, "jobs/evaluate.py", "--model", f"{d}/runs/tiny/model", "--benchmark", bench, "--tokens", tokens,
               "--out", f"{d}/eval/trained", "--title", "trained tiny", "--baseline", f"{d}/eval/untrained/summary.json"],
              outputs=("eval/trained",)),
        Stage("evaluate_online", "online evaluation: each val video streamed frame by frame into a live session, "
              "asked at 25, 50, 75 and 100% of it",
              [py, "jobs/evaluate.py", "--model", f"{d}/runs/tiny/model", "--benchmark", bench, "--out", f"{d}/eval/online",
               "--title", "trained tiny, online", "--online", "--online-fractions", "0.25", "0.5", "0.75"],
              outputs=("eval/online",)),
        Stage("grpo", f"reinforcement: {cfg.grpo_steps} GRPO steps from the trained model, rewards from the official scorer",
              [py, "jobs/train.py", "--method", "grpo", "--init-model", f"{d}/runs/tiny/model", "--qa", f"{d}/qa/benchmark/train",
               "--tokens", tokens, "--out", f"{d}/runs/tiny-grpo", "--preset", "tiny", "--num-workers", "1",
               "--cpus-per-worker", "0.5", "--max-steps", str(cfg.grpo_steps), "--micro-batch-size", "2", "--group-size", "4",
               "--max-new-tokens", "6", "--lr", "1e-3", "--warmup-ratio", "0", "--checkpoint-every", str(cfg.grpo_steps),
               "--log-every", "1"],
              outputs=("runs/tiny-grpo",)),
        Stage("evaluate_grpo", "evaluation of the GRPO model, beside the supervised one",
              [py, "jobs/evaluate.py", "--model", f"{d}/runs/tiny-grpo/model", "--benchmark", bench, "--tokens", tokens,
               "--out", f"{d}/eval/grpo", "--title", "GRPO tiny", "--baseline", f"{d}/eval/trained/summary.json"],
              outputs=("eval/grpo",)),
    ]  # fmt: skip


def _progress(log: Path) -> tuple[int, int] | None:
    """The latest ``n/total`` of a tqdm bar the stage wrote to its log."""
    try:
        with log.open("rb") as f:
            f.seek(max(0, log.stat().st_size - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return None
    found = [m.group(1, 2) if m.group(1) else m.group(3, 4) for m in _PROGRESS.finditer(tail)]
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def run_stage(index: int, count: int, stage: Stage, logs: Path, env: dict[str, str]) -> StageResult:
    """Runs one stage with its output in its log; one header, one bar, one summary line on the console."""
    print(f"[{index}/{count}] {stage.title}", flush=True)
    log = logs / f"{stage.name}.log"
    start = time.monotonic()
    # On a terminal the bar redraws in place every half second; in a log file (not a terminal) it
    # is written only when the stage's progress moves, so a captured console stays short.
    live = sys.stdout.isatty()
    with log.open("w") as out, tqdm(total=None, unit="step", bar_format="      {desc}{bar:30} {elapsed}",
                                    mininterval=0, file=sys.stdout) as bar:  # fmt: skip
        proc = subprocess.Popen(stage.argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        shown = None
        while proc.poll() is None:
            time.sleep(0.5)
            progress = _progress(log)
            if progress is not None and progress != shown:
                bar.total, bar.n = progress[1], progress[0]
                bar.set_description_str(f"{progress[0]}/{progress[1]} ", refresh=False)
            if live or progress != shown:
                bar.refresh()
            shown = progress
        if bar.total:
            bar.n = bar.total
    seconds = time.monotonic() - start
    text = log.read_text(errors="replace")
    summary = next((line for line in reversed(text.splitlines()) if _SUMMARY.match(line)), "")
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise RuntimeError(f"stage {stage.name} failed (exit {proc.returncode}); the end of {log}:\n{tail}")
    print(f"      {summary or 'done'} ({seconds:.0f} s)", flush=True)
    return StageResult(stage, seconds, summary, log)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _ask(cfg: DemoConfig, env: dict[str, str], logs: Path, index: int, count: int) -> StageResult:
    """Serves the trained model and asks it one generated question about a val video."""
    rows = [r for r in read_benchmark(f"{cfg.data}/qa/benchmark/val") if r.scene_name == cfg.video]
    if not rows:
        raise RuntimeError(f"no val question about {cfg.video} under {cfg.data}/qa/benchmark/val (is it a val scene?)")
    row = next((r for r in rows if r.question_type == "object_counting"), rows[0])
    question = row.question + ("\nOptions:\n" + "\n".join(row.options) if row.options else "")
    ply = f"{cfg.data}/reconstructions/{cfg.video}/points.ply"
    stage = Stage("serve", "serving: the trained model behind the OpenAI-compatible API, asked about a whole video "
                  "and live, frame by frame",
                  [sys.executable, "-m", "serve_apps.demo_client", "--model", f"{cfg.data}/runs/tiny/model",
                   "--video", f"{cfg.data}/scenes/synthetic/{cfg.video}/video.mp4", "--question", question,
                   "--live-ply", ply, "--live-confidence", "1", "--live-voxel-size", "0"], outputs=(f"reconstructions/{cfg.video}",))  # fmt: skip
    result = run_stage(index, count, stage, logs, env)
    text = result.log.read_text(errors="replace")
    answer = re.search(r"^A: (.*)$", text, re.MULTILINE)
    live = re.search(r"^LIVE: (.*)$", text, re.MULTILINE)
    result.extra = {"question": row.question, "answer": answer.group(1).strip() if answer else "",
                    "live": live.group(1).strip() if live else "", "ply": ply, "points": _ply_points(ply),
                    "truth": row.mc_answer or row.ground_truth, "options": row.options}  # fmt: skip
    return result


def _ply_points(uri: str) -> int | None:
    """The vertex count in a PLY header."""
    try:
        with open(uri, "rb") as f:
            header = f.read(512).decode("ascii", "replace")
    except OSError:
        return None
    found = re.search(r"element vertex (\d+)", header)
    return int(found.group(1)) if found else None


def _eval_table(cfg: DemoConfig) -> list[str]:
    """Official overall scores per benchmark: baselines (when the summary has them) and each model."""
    runs = {name: f"{cfg.data}/eval/{name}/summary.json" for name in ("untrained", "trained", "grpo")}
    summaries = {name: json.loads(Path(uri).read_text()) for name, uri in runs.items() if Path(uri).exists()}
    if not summaries:
        return []
    first = next(iter(summaries.values()))
    chance = first.get("chance_levels", {})  # {benchmark: {"chance": {"overall": x}, "frequency": {...}}}
    columns = ["chance", "frequency", *summaries]
    lines = [f"  {'benchmark':<12}" + "".join(f"{c:>11}" for c in columns)]
    for bench in first["benchmarks"]:
        cells = [chance.get(bench, {}).get(level, {}).get("overall") for level in ("chance", "frequency")]
        cells += [s["benchmarks"].get(bench, {}).get("overall", {}).get("official") for s in summaries.values()]
        lines.append(f"  {bench:<12}" + "".join(f"{'-' if v is None else f'{v:.1f}':>11}" for v in cells))
    return lines


def _online_line(cfg: DemoConfig) -> str:
    """The online evaluation's score against fraction of the video seen, one line per benchmark."""
    uri = Path(f"{cfg.data}/eval/online/summary.json")
    curve = json.loads(uri.read_text()).get("online_curve", {}) if uri.exists() else {}
    lines = [f"  {bench:<12}" + ", ".join(f"{p['fraction']:.0%} seen {p['official']:.1f}" for p in points)
             for bench, points in curve.items()]  # fmt: skip
    return "\n".join(["Online (trained, videos streamed into live sessions; plot: eval/online/plots/online_curve.png):",
                       *lines]) if lines else ""  # fmt: skip


def demo(cfg: DemoConfig) -> int:
    data = Path(cfg.data)
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    plan = stages(cfg)
    count = len(plan) + 1
    print(f"VLM-3R demo: {count} stages on a local Ray, the tiny preset, data in {cfg.data} "
          f"(full output of each stage: {logs}/<stage>.log)", flush=True)  # fmt: skip
    start = time.monotonic()
    try:
        results = [run_stage(i, count, s, logs, env) for i, s in enumerate(plan, start=1)]
        results.append(_ask(cfg, env, logs, count, count))
    except RuntimeError as e:
        print(f"[demo] error: {e}", file=sys.stderr, flush=True)
        return 1
    print(f"\nDone in {(time.monotonic() - start) / 60:.1f} min. What each stage wrote under {cfg.data}:")
    for r in results[:-1]:
        size = sum(_size(data / o) for o in r.stage.outputs)
        summary = _short(re.sub(r"^\[\w+\] ", "", r.summary).split(" -> ")[0], 90)
        print(f"  {r.stage.name:<19}{r.seconds:>5.0f} s {size / 2**20:>7.1f} MiB  {summary}")
    table = _eval_table(cfg)
    if table:
        print("Official scores on the val questions (report: eval/trained/report.html):")
        print("\n".join(table))
    curve = _online_line(cfg)
    if curve:
        print(curve)
    ask = results[-1].extra
    print(f"Asked the served model about {cfg.video}: {ask['question']}")
    print(f"  ground truth: {ask['truth']}   answer about the whole video: {_short(ask['answer'] or '(none)', 40)}")
    print(f"  answer of the live session at its end: {_short(ask['live'] or '(none)', 40)}")
    print(f"  the live session's reconstruction: {ask['points'] or 0} points in {ask['ply']} (camera path beside it)")
    print("The tiny preset is a 2-layer model with random encoder weights that trains in minutes on a laptop: its "
          "scores show the pipeline runs end to end, not spatial reasoning (use vlm3r-7b for that).")  # fmt: skip
    print("Next:")
    print(f"  demo page:   .venv/bin/serve run serve_apps.app:build_app model={cfg.data}/runs/tiny/model demo_videos={cfg.data} "
          "cut3r_point_heads=true"
          "   then open http://127.0.0.1:8000/")  # fmt: skip
    print("  live:        .venv/bin/python -m serve_apps.stream_client --url http://127.0.0.1:8000 --video <file> "
          "--realtime --ask \"t=end:How big is this room?\" --save-ply room.ply")  # fmt: skip
    print("  own scans:   python jobs/convert_scenes.py --dataset scannet --source <scans> --out <root>   (README: Real scans)")
    print("  a cluster:   README 'Running on a cluster' (Terraform + KubeRay, ray job submit)")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_job("demo", argv, [DemoConfig], demo, __doc__.split("\n", 1)[0])


if __name__ == "__main__":
    sys.exit(main())
