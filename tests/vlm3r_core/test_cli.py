"""The one CLI layer: flags from typed configs, help from their docstrings, one-line errors, exit codes."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Literal

import pytest

from vlm3r_core.cli import UsageError, field_help, parse, run_job
from vlm3r_core.ledger import RunSummary


@dataclass(frozen=True)
class Inner:
    """Rendering.

    Args:
        width, height: frame size in pixels,
            even numbers.
        fast: use the fast path.
    """

    width: int = 64
    height: int = 48
    fast: bool = True

    def __post_init__(self):
        if self.width % 2:
            raise ValueError(f"width must be even, got {self.width}")


@dataclass(frozen=True)
class Outer:
    """A run.

    Args:
        out: where to write.
        count: how many.
        mode: how.
        names: which ones.
        limit: at most this many.
        gpu: GPU use.
        inner: rendering.
        hidden: set by the job.
    """

    out: str
    count: int = 1
    mode: Literal["a", "b"] = "a"
    names: tuple[str, ...] = ()
    limit: float | None = None
    gpu: Literal["auto", "on", "off"] = field(default="auto", metadata={"const": "on"})
    inner: Inner = field(default_factory=Inner)
    hidden: int = field(default=7, metadata={"cli": False})

    def __post_init__(self):
        if self.count < 0:
            raise ValueError(f"count must be >= 0, got {self.count}")


def test_flags_follow_the_fields():
    (cfg,) = parse(["--out", "x", "--count", "3", "--mode", "b", "--names", "p", "q", "--limit", "2.5",
                    "--gpu", "--width", "32", "--no-fast"], Outer)  # fmt: skip
    assert cfg == Outer("x", 3, "b", ("p", "q"), 2.5, "on", Inner(32, 48, False))
    (default,) = parse(["--out", "x"], Outer)
    assert default == Outer("x") and default.hidden == 7


def test_help_comes_from_the_docstring():
    assert field_help(Inner) == {"width": "frame size in pixels, even numbers.", "height": "frame size in pixels, even numbers.",
                                 "fast": "use the fast path."}  # fmt: skip
    with pytest.raises(SystemExit) as e:
        parse(["--help"], Outer)
    assert e.value.code == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--count", "3"], "the following arguments are required: --out"),
        (["--out", "x", "--count", "abc"], "argument --count: invalid int value 'abc'"),
        (["--out", "x", "--count", "-1"], "--count must be >= 0, got -1"),
        (["--out", "x", "--width", "33"], "--width must be even, got 33"),
        (["--out", "x", "--mode", "c"], "argument --mode: invalid choice: 'c'"),
        (["--out", "x", "--frobnicate"], "unrecognized arguments: --frobnicate"),
        (["--out", "x", "--hidden", "3"], "unrecognized arguments: --hidden"),
    ],
)
def test_bad_input_is_one_line_naming_the_flag(argv, message):
    with pytest.raises(UsageError, match=None) as e:
        parse(argv, Outer)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_run_job_turns_every_ending_into_a_line_and_a_code(capsys):
    def ok(cfg: Outer) -> RunSummary:
        return RunSummary("demo", total=2, done_before=1, done=1, failed=0, folder=cfg.out)

    assert run_job("demo", ["--out", "o"], [Outer], ok) == 0
    assert capsys.readouterr().out == "[demo] 1 done, 1 already done, 0 failed of 2 -> o\n"
    assert run_job("demo", ["--out", "o", "--count", "x"], [Outer], ok) == 1
    assert capsys.readouterr().err == "[demo] error: argument --count: invalid int value 'x' (see --help)\n"

    def missing(cfg: Outer) -> int:
        raise FileNotFoundError(f"{cfg.out}: no scenes")

    assert run_job("demo", ["--out", "o"], [Outer], missing) == 1
    assert capsys.readouterr().err == "[demo] error: FileNotFoundError: o: no scenes\n"

    def stopped(cfg: Outer) -> int:
        signal.raise_signal(signal.SIGINT)
        return 0

    # Ctrl-C as Python delivers it (an earlier Ray Train fit() in this process may have left its own handler)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        assert run_job("demo", ["--out", "o"], [Outer], stopped) == 130
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "[demo] interrupted" in capsys.readouterr().err
