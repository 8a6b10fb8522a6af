"""``ray job submit`` as users type it, against the cluster of ``cluster/local/`` (tests/cluster)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@dataclass
class Submission:
    """A ``ray job submit`` run: its CLI process and the log it tails into a file."""

    proc: subprocess.Popen
    log: Path

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def job_id(self) -> str:
        found = re.search(r"Job '(raysubmit_\w+)' submitted successfully", self.output)
        return found.group(1) if found else ""

    def wait(self, timeout_s: float) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def summary(self, job: str) -> str:
        """The job's summary line (``[job] ...``), the last one it printed."""
        lines = [line for line in self.output.splitlines() if line.startswith(f"[{job}] ")]
        return lines[-1] if lines else ""


def submit(cluster, args: list[str], log: Path) -> Submission:
    """``ray job submit --working-dir . -- python <args>`` from the repository root, as the README says,
    with the cluster's address and token in the environment; runs in the background."""
    env = {**os.environ, **cluster.client_env()}
    with open(log, "w") as out:
        proc = subprocess.Popen([str(BIN / "ray"), "job", "submit", "--working-dir", ".", "--", "python", *args],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    return Submission(proc, log)


def run_job(cluster, args: list[str], log: Path, timeout_s: float) -> Submission:
    """Submits and waits; fails the test with the job's log tail unless the job succeeded."""
    started = time.monotonic()
    sub = submit(cluster, args, log)
    rc = sub.wait(timeout_s)
    print(f"[cluster] {args[0]}: {time.monotonic() - started:.0f} s", flush=True)
    assert rc == 0, f"ray job submit {args[0]} exited {rc}:\n{sub.output[-4000:]}"
    assert f"Job '{sub.job_id}' succeeded" in sub.output
    return sub
