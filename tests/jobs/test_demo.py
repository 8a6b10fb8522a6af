"""The demo runner (jobs/demo.py): a stage's chatter goes to its log, the console gets a header, a bar
and the job's summary line; the final table reads what evaluation writes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from jobs import demo
from vlm3r_core.metrics import ScoredRow, chance_levels, summarize

CHATTY = r"""
import sys
for i in range(300):
    print(f"(MapBatches pid={i}) chatter line {i}", file=sys.stderr if i % 2 else sys.stdout)
for n in range(1, 6):
    print(f"precompute: {n}/5 [00:0{n}<00:00]", file=sys.stderr, flush=True)
print("[fake] 5 done, 0 already done, 0 failed of 5 -> out")
"""


def test_a_stage_shows_a_header_a_bar_and_its_summary_and_logs_the_rest(tmp_path, capsys):
    stage = demo.Stage("fake", "a fake stage", [sys.executable, "-c", CHATTY])
    result = demo.run_stage(2, 7, stage, tmp_path, env={"PATH": "/usr/bin:/bin"})
    console = capsys.readouterr().out
    lines = [line for line in console.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[0] == "[2/7] a fake stage"
    assert lines[-1].strip().startswith("[fake] 5 done, 0 already done, 0 failed of 5 -> out (")
    assert "chatter" not in console
    # Outside a terminal the bar is redrawn only when the stage's progress moves.
    assert len(lines) <= 2 + 7, lines
    log = (tmp_path / "fake.log").read_text()
    assert log.count("chatter line") == 300 and result.summary.startswith("[fake] 5 done")


def test_a_failing_stage_stops_with_the_end_of_its_log(tmp_path, capsys):
    code = "import sys; print('loading'); print('ValueError: scenes/x/scene.json: bad frame', file=sys.stderr); sys.exit(3)"
    stage = demo.Stage("broken", "a broken stage", [sys.executable, "-c", code])
    with pytest.raises(RuntimeError, match=r"stage broken failed \(exit 3\)[\s\S]*scene.json: bad frame"):
        demo.run_stage(1, 1, stage, tmp_path, env={"PATH": "/usr/bin:/bin"})


def test_the_evaluation_table_puts_models_beside_the_chance_levels(tmp_path):
    rows = [("object_counting", (), "2", None), ("object_counting", (), "3", None),
            ("object_rel_direction_easy", ("A. left", "B. right"), "A", None)]  # fmt: skip
    levels = chance_levels(rows)
    for name, score in (("untrained", 0.0), ("trained", 1.0)):
        summary = summarize([ScoredRow(t, score, score) for t, *_ in rows])
        out = Path(tmp_path, "eval", name)
        out.mkdir(parents=True)
        (out / "summary.json").write_text(json.dumps({
            "benchmarks": {k: s.to_dict() for k, s in summary.items()},
            "chance_levels": {k: c.to_dict() for k, c in levels.items()},
        }))  # fmt: skip
    table = demo._eval_table(demo.DemoConfig(data=str(tmp_path)))
    assert table[0].split() == ["benchmark", "chance", "frequency", "untrained", "trained"]
    vsi = table[1].split()
    assert vsi[0] == "vsibench" and vsi[1] == "-"  # chance is undefined with numeric questions
    assert [float(v) for v in vsi[2:]] == [pytest.approx(levels["vsibench"].frequency_overall, abs=0.05), 0.0, 100.0]


def test_bad_sizes_are_one_line_errors(capsys):
    assert demo.main(["--num-scenes", "2"]) == 1
    assert capsys.readouterr().err.strip() == "[demo] error: --num-scenes must be >= 4 (the demo needs train and val scenes), got 2"
