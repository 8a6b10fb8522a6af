"""Every job's command line: bad input ends in one line naming the flag and exit 1 (never a
traceback, never argparse's 2); SIGTERM stops a job's Ray work and exits 130."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs import convert_scenes, evaluate, generate_qa, make_scenes, precompute_tokens, train
from vlm3r_core import storage

ROOT = Path(__file__).resolve().parents[2]
CASES = [
    (make_scenes, ["--num-scenes", "-1", "--out", "o"], "--num-scenes must be >= 1, got -1"),
    (make_scenes, ["--num-scenes", "1", "--out", "o", "--width", "0"], "--width must be an even number >= 16"),
    (make_scenes, ["--num-scenes", "two", "--out", "o"], "argument --num-scenes: invalid int value 'two'"),
    (make_scenes, ["--out", "o"], "the following arguments are required: --num-scenes"),
    (convert_scenes, ["--dataset", "nope", "--source", "s", "--out", "o"], "argument --dataset: invalid choice: 'nope'"),
    (convert_scenes, ["--dataset", "scannet", "--source", "s", "--out", "o", "--frame-stride", "0"],
     "--frame-stride must be >= 1, got 0"),
    (generate_qa, ["--scenes", "s", "--out", "o", "--per-scene-cap", "abc"], "--per-scene-cap 'abc': expected N or TASK=N"),
    (generate_qa, ["--scenes", "s", "--out", "o", "--preset", "giant"], "unknown --preset 'giant'"),
    (generate_qa, ["--out", "o"], "the following arguments are required: --scenes"),
    (generate_qa, ["--scenes", "s", "--out", "o", "--route-planner", "magic"], "argument --route-planner: invalid choice"),
    (precompute_tokens, ["--scenes", "s", "--out", "o", "--num-frames", "0"], "--num-frames must be >= 1, got 0"),
    (precompute_tokens, ["--scenes", "s", "--out", "o", "--preset", "giant"], "unknown --preset 'giant'"),
    (precompute_tokens, ["--scenes", "s", "--out", "o", "--gpu", "maybe"], "argument --gpu: invalid choice: 'maybe'"),
    (evaluate, ["--model", "tiny", "--out", "o"], "the following arguments are required: --benchmark"),
    (evaluate, ["--model", "tiny", "--benchmark", "b", "--out", "o", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (evaluate, ["--model", "tiny", "--benchmark", "b", "--out", "o", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (train, ["--qa", "q", "--tokens", "t"], "the following arguments are required: --out"),
    (train, ["--qa", "q", "--tokens", "t", "--out", "o", "--zero-stage", "1"], "--zero-stage must be one of [2, 3], got 1"),
    (train, ["--qa", "q", "--tokens", "t", "--out", "o", "--lr", "fast"], "argument --lr: invalid float value 'fast'"),
]  # fmt: skip


@pytest.mark.parametrize(("job", "argv", "message"), CASES, ids=[f"{c[0].__name__.split('.')[-1]}-{i}" for i, c in enumerate(CASES)])
def test_bad_input_is_one_line_and_exit_1(job, argv, message, capsys):
    assert job.main(argv) == 1
    captured = capsys.readouterr()
    name = job.__name__.split(".")[-1]
    (line,) = captured.err.splitlines()
    assert line.startswith(f"[{name}] error: ") and message in line, line
    assert captured.out == ""


@pytest.mark.parametrize("job", [make_scenes, convert_scenes, generate_qa, precompute_tokens, train, evaluate])
def test_help_lists_every_flag_with_its_text(job, capsys):
    with pytest.raises(SystemExit) as e:
        job.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--address" in text and "--gpu" in text and "(default: " in text


def test_sigterm_stops_the_job_and_its_ray_work(tmp_path):
    """A job killed by SIGTERM (``ray job stop``, ``kill``) stops its workers at once: exit 130,
    the interruption said in one line, and nothing is written after it exits."""
    out = tmp_path / "data"
    env = {**os.environ, "RAY_ADDRESS": "", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "jobs/make_scenes.py", "--num-scenes", "12", "--out", str(out), "--width", "160",
           "--height", "120", "--duration-s", "20", "--num-cpus-per-scene", "0.5"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(out.glob("scenes/synthetic/*/video.mp4")):
            time.sleep(0.5)  # wait until its Ray tasks are writing scenes
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    stopped = time.time()
    assert proc.returncode == 130, err[-2000:]
    assert "[make_scenes] interrupted" in err
    time.sleep(5)
    later = [p for p in out.rglob("*") if p.is_file() and p.stat().st_mtime > stopped]
    assert later == [], f"written after the job stopped: {later}"
    done = storage.read_jsonl(str(out / "scenes" / "synthetic" / "manifest.jsonl"))
    assert len(done) < 12  # what finished before the signal is recorded; a re-run does the rest
