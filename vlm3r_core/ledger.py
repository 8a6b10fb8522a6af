"""The run ledger: one bookkeeping protocol for every job (what is done, what failed and why, resume,
summary, exit code).

A job works through *items* (scenes, videos, questions), each named by a key. Its ledger lives in
an output folder as two JSON-lines files:

- ``manifest.jsonl``: one row per item that is durably done (the row says where its output is);
  written sorted by key, rewritten at most every ``flush_s`` seconds while a run goes and at the
  end, so a stopped run loses at most that much bookkeeping (never output: an item enters the
  manifest only after its output is written);
- ``errors.jsonl``: one row per item that failed *in the last run*, ``{<key>: ..., "error":
  "<Type>: <reason>", ...}``; an empty file after a run where nothing failed.

Use it as a context manager (``with RunLedger(...) as ledger:``): a run stopped by an exception
or an interrupt still writes what it recorded. A re-run skips the items of the manifest (:meth:`RunLedger.is_done`) and tries the failed ones
again. :meth:`RunLedger.close` returns a :class:`RunSummary`, whose :attr:`~RunSummary.exit_code`
depends only on the state of the output: 1 when items failed and none of the input is done
(nothing usable was produced), else 0. A first run and a re-run over the same state give the same
verdict.

Storage trouble (an unreachable S3 endpoint, a full disk) while the ledger writes is not raised
through the job: the rows stay in memory, the next flush tries again, and :meth:`close` reports
what could not be written in the summary (and exits 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from vlm3r_core import storage

__all__ = ["ERRORS_FILE", "MANIFEST_FILE", "RunLedger", "RunSummary", "error_reason"]

MANIFEST_FILE = "manifest.jsonl"
ERRORS_FILE = "errors.jsonl"
FLUSH_S = 10.0


def error_reason(e: BaseException) -> str:
    """``"<Type>: <message>"``, the reason format of every errors file."""
    return f"{type(e).__name__}: {e}"


@dataclass(frozen=True)
class RunSummary:
    """What one run did, and the exit code that follows from the state of its output.

    Attributes:
        job: the job's name (prefix of the summary line).
        total: items of this run's input.
        done_before: items of the input already done when the run started (skipped).
        done: items done by this run.
        failed: items that failed in this run (in ``errors.jsonl``).
        folder: where the manifest and errors file are.
        storage_error: why the ledger could not be written at the end, or "".
        details: job-specific figures for the summary line, shown as "<value> <name>" (e.g.
            ``{"shards": 3, "MiB per video": "0.22"}``).
    """

    job: str
    total: int
    done_before: int
    done: int
    failed: int
    folder: str
    storage_error: str = ""
    details: Mapping[str, object] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """1 when the output could not be recorded, or when items failed and nothing of the input
        is done; else 0 (some failures next to usable output are recorded, not fatal)."""
        if self.storage_error:
            return 1
        return 1 if self.failed and self.done_before + self.done == 0 else 0

    def line(self) -> str:
        """The one-line summary every job prints last."""
        extra = "".join(f", {v} {k}" for k, v in self.details.items())
        text = (
            f"[{self.job}] {self.done} done, {self.done_before} already done, {self.failed} failed "
            f"of {self.total}{extra} -> {self.folder}"
        )
        if self.failed:
            text += f" (reasons: {storage.join(self.folder, ERRORS_FILE)})"
        if self.storage_error:
            text += f"; could not record the run: {self.storage_error}"
        return text


class RunLedger:
    """Manifest, errors, resume and summary of one job run over keyed items.

    Args:
        job: the job's name (``"precompute_tokens"``), for the summary.
        folder: the folder (URI) holding ``manifest.jsonl`` and ``errors.jsonl``.
        key: the row field that names an item (``"video_id"``, ``"scene_id"``, ``"id"``).
        accept: keeps only the manifest rows for which it is True (e.g. answers of the same
            model); the others count as not done and are dropped at the next write.
        done: the manifest to start from instead of reading it (e.g. after reconciling it with
            the outputs that exist); rows keyed by ``key``.
        flush_s: least seconds between two manifest writes while the run goes.
        manifest_file, errors_file: file names in ``folder``.
    """

    def __init__(
        self,
        job: str,
        folder: str,
        key: str,
        *,
        accept: Callable[[dict], bool] | None = None,
        done: Mapping[str, dict] | None = None,
        flush_s: float = FLUSH_S,
        manifest_file: str = MANIFEST_FILE,
        errors_file: str = ERRORS_FILE,
    ):
        self.job, self.folder, self.key, self.flush_s = job, folder, key, flush_s
        self.manifest_uri = storage.join(folder, manifest_file)
        self.errors_uri = storage.join(folder, errors_file)
        if done is None:
            rows = storage.read_jsonl(self.manifest_uri) if storage.exists(self.manifest_uri) else []
            done = {str(r[key]): r for r in rows}
        self.rows: dict[str, dict] = {k: r for k, r in done.items() if accept is None or accept(r)}
        self.errors: dict[str, dict] = {}
        self._total = 0
        self._done_before = 0
        self._done_now = 0
        self._dirty = False
        self._last_flush = time.monotonic()
        self._write_error = ""
        self._closed = False

    def __enter__(self) -> RunLedger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """A run stopped by an exception (Ctrl-C, SIGTERM, a bug) still records what it did."""
        if exc_type is not None and not self._closed:
            self.close()

    # --- planning -----------------------------------------------------------------------------

    def is_done(self, key: str) -> bool:
        return str(key) in self.rows

    def plan(self, keys: Iterable[str]) -> list[str]:
        """Registers this run's input and returns the keys still to do (input order kept)."""
        keys = [str(k) for k in keys]
        todo = [k for k in keys if k not in self.rows]
        self._total += len(keys)
        self._done_before += len(keys) - len(todo)
        return todo

    # --- recording ----------------------------------------------------------------------------

    def record(self, row: Mapping) -> None:
        """An item is done: its manifest row (with the key field) enters the manifest."""
        key = str(row[self.key])
        self.rows[key] = dict(row)
        self.errors.pop(key, None)
        self._done_now += 1
        self._dirty = True
        self.maybe_flush()

    def fail(self, key: str, reason: str, **extra) -> None:
        """An item failed: ``{key: ..., "error": reason, **extra}`` goes to the errors file."""
        self.errors[str(key)] = {self.key: str(key), "error": reason, **extra}

    def maybe_flush(self) -> None:
        """Writes the manifest if ``flush_s`` has passed since the last write."""
        if self._dirty and time.monotonic() - self._last_flush >= self.flush_s:
            self.flush()

    def flush(self) -> bool:
        """Writes the manifest now; False (and the reason kept for the summary) when storage fails."""
        try:
            storage.write_jsonl(self.manifest_uri, [self.rows[k] for k in sorted(self.rows)])
        except Exception as e:  # noqa: BLE001 - any storage failure is reported, never raised
            self._write_error = f"{self.manifest_uri}: {error_reason(e)}"
            return False
        self._dirty, self._last_flush, self._write_error = False, time.monotonic(), ""
        return True

    def close(self, **details) -> RunSummary:
        """Writes the manifest and this run's errors, and returns the run's summary."""
        self._closed = True
        self.flush()
        if not self._write_error:
            try:
                storage.write_jsonl(self.errors_uri, [self.errors[k] for k in sorted(self.errors)])
            except Exception as e:  # noqa: BLE001 - as in flush
                self._write_error = f"{self.errors_uri}: {error_reason(e)}"
        return RunSummary(
            job=self.job,
            total=self._total,
            done_before=self._done_before,
            done=self._done_now,
            failed=len(self.errors),
            folder=self.folder,
            storage_error=self._write_error,
            details=details,
        )
