"""The loopback multi-node Ray cluster of ``cluster/local/`` as a fixture (``-m cluster``;
``--cluster-full`` for the documented full run, ``make cluster-test``)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest

from benchmarks.bench_serve_autoscaling import load_local_cluster


@pytest.fixture(scope="session")
def cluster_full(request) -> bool:
    return request.config.getoption("--cluster-full")


@pytest.fixture(scope="module")
def local_cluster(request, moto_endpoint):
    """Head + 2 worker nodes (``cluster/local/local_cluster.py up``), each its own ``ray start``,
    token auth on. Started after ``moto_endpoint`` so every node reaches the test S3 endpoint;
    stopped (exactly the processes it started) when the module's tests are done, failed or not. The
    nodes' logs are kept (their folder is printed) when a test failed."""
    lc = load_local_cluster()
    state = Path(tempfile.mkdtemp(prefix="v16-", dir="/tmp"))  # short: Ray's socket paths must fit
    failed_before = request.session.testsfailed
    started = time.monotonic()
    cluster = lc.up(state, workers=2)
    print(f"\n[cluster] head + 2 workers up in {time.monotonic() - started:.0f} s", flush=True)
    try:
        yield cluster
    finally:
        lc.down(cluster, grace_s=5.0)  # SIGKILL what is left after 5 s (20 s by default)
        if request.session.testsfailed == failed_before:
            shutil.rmtree(state, ignore_errors=True)
        else:
            print(f"\n[cluster] a test failed: the nodes' logs are kept in {state}", flush=True)
