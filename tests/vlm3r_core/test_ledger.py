"""The run ledger: manifest, errors, resume, summary and the exit code from the state of the output."""

from __future__ import annotations

import pytest

from vlm3r_core import storage
from vlm3r_core.ledger import RunLedger


def _run(folder: str, items: dict[str, bool]) -> tuple[int, str]:
    """One run over ``items`` (key -> succeeds?); returns the exit code and the summary line."""
    with RunLedger("job", folder, "key") as ledger:
        for key in ledger.plan(items):
            if items[key]:
                ledger.record({"key": key, "out": f"{key}.bin"})
            else:
                ledger.fail(key, "ValueError: broken", source=key)
        summary = ledger.close(widgets=3)
    return summary.exit_code, summary.line()


def test_the_same_state_gives_the_same_verdict_on_a_first_run_and_a_rerun(tmp_path):
    folder = str(tmp_path / "out")
    items = {"a": True, "b": True, "bad": False}
    assert _run(folder, items) == (0, f"[job] 2 done, 0 already done, 1 failed of 3, 3 widgets -> {folder} "
                                      f"(reasons: {folder}/errors.jsonl)")  # fmt: skip
    # Only the broken item is left: it fails again, and the output still holds the others.
    code, line = _run(folder, items)
    assert code == 0 and line.startswith("[job] 0 done, 2 already done, 1 failed of 3")
    assert storage.read_jsonl(f"{folder}/errors.jsonl") == [{"key": "bad", "error": "ValueError: broken", "source": "bad"}]
    assert [r["key"] for r in storage.read_jsonl(f"{folder}/manifest.jsonl")] == ["a", "b"]
    # Nothing usable at all: 1, on every run.
    other = str(tmp_path / "other")
    assert _run(other, {"x": False})[0] == 1 and _run(other, {"x": False})[0] == 1
    # Fixed: the item is done, its error is gone.
    assert _run(folder, {**items, "bad": True})[0] == 0
    assert storage.read_jsonl(f"{folder}/errors.jsonl") == []


def test_manifest_is_flushed_while_the_run_goes_and_kept_on_an_interrupt(tmp_path):
    folder = str(tmp_path / "out")
    with pytest.raises(KeyboardInterrupt), RunLedger("job", folder, "key", flush_s=0) as ledger:
        ledger.plan(["a", "b", "c"])
        ledger.record({"key": "a"})
        assert [r["key"] for r in storage.read_jsonl(f"{folder}/manifest.jsonl")] == ["a"]  # written as it goes
        ledger.record({"key": "b"})
        ledger.fail("c", "OSError: disk")
        raise KeyboardInterrupt
    assert [r["key"] for r in storage.read_jsonl(f"{folder}/manifest.jsonl")] == ["a", "b"]
    assert storage.read_jsonl(f"{folder}/errors.jsonl") == [{"key": "c", "error": "OSError: disk"}]
    with RunLedger("job", folder, "key") as again:
        assert again.plan(["a", "b", "c"]) == ["c"]


def test_rows_of_another_run_kind_are_not_taken_as_done(tmp_path):
    folder = str(tmp_path / "out")
    storage.write_jsonl(f"{folder}/answers.jsonl", [{"id": "q0", "model": "m1"}, {"id": "q1", "model": "m2"}])
    ledger = RunLedger("evaluate", folder, "id", manifest_file="answers.jsonl", accept=lambda r: r["model"] == "m1")
    assert ledger.plan(["q0", "q1"]) == ["q1"]


def test_storage_that_cannot_be_written_is_reported_not_raised(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the ledger folder should be")
    with RunLedger("job", str(blocker), "key") as ledger:
        ledger.plan(["a"])
        ledger.record({"key": "a"})
        summary = ledger.close()
    assert summary.exit_code == 1 and summary.done == 1
    assert "could not record the run: " in summary.line() and "manifest.jsonl" in summary.line()
