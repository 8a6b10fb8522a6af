"""Shared test fixtures: a real S3 endpoint (moto_server on loopback) and one local Ray per session."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from serve_apps.ports import free_loopback_port

# Settings every test run needs, set before anything imports Ray.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Toy models are dominated by per-op overhead; more threads than one only fight Ray workers for 2 cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# moto needs some credentials; tests never reach a real AWS endpoint.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

ROOT = Path(__file__).resolve().parents[1]


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="run tests that need released weights")
    parser.addoption("--cluster-full", action="store_true", help="tests/cluster at full size (make cluster-test)")
    parser.addoption(
        "--screenshots",
        metavar="DIR",
        help="browser tests also write the README's screenshots here (e.g. docs/images)",
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="needs --run-slow (released weights or long runs)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def screenshots_dir(request) -> Path | None:
    """Where browser tests write the README's screenshots (``--screenshots DIR``), else None."""
    value = request.config.getoption("--screenshots")
    return Path(value).resolve() if value else None


@pytest.fixture(scope="session")
def moto_endpoint():
    """A real S3 HTTP endpoint (moto_server) bound to 127.0.0.1 for the whole session.

    Sets ``AWS_ENDPOINT_URL`` so ``vlm3r_core.storage`` and Ray (started later in the session)
    reach it.
    """
    port = free_loopback_port()
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start within 30 s")
    previous = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    yield endpoint
    if previous is None:
        os.environ.pop("AWS_ENDPOINT_URL", None)
    else:
        os.environ["AWS_ENDPOINT_URL"] = previous
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def moto_s3(moto_endpoint):
    """A fresh, empty bucket on the moto endpoint; yields its ``s3://bucket`` URI."""
    import boto3

    bucket = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    yield f"s3://{bucket}"


@pytest.fixture(scope="session")
def ray_local(moto_endpoint):
    """One local Ray for the session (4 logical CPUs on 2 cores so pools and reads both fit).

    Depends on ``moto_endpoint`` so that ``AWS_ENDPOINT_URL`` is set before Ray starts and every
    Ray worker can reach the test S3 endpoint.
    """
    import ray

    from jobs.common import configure_data_context

    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    configure_data_context()
    yield ray
    ray.shutdown()



def _serve_running() -> bool:
    """Whether a Ray Serve controller runs on the connected Ray (``serve.status()`` would start one)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


@pytest.fixture(scope="session")
def serve_port(ray_local):
    """Ray Serve on the session's Ray with its HTTP proxy on a loopback port, shared by the modules
    that deploy an app (each deletes its own apps when done): starting and stopping Serve costs about
    13 s on 2 cores, which every such module paid. Returns a callable giving the port; it starts
    Serve again when something else (a benchmark's ``main``) shut it down. Shut down after the session."""
    from ray import serve

    state: dict[str, int] = {}

    def port() -> int:
        if "port" not in state or not _serve_running():
            if _serve_running():  # started by someone else, on a port we do not know
                serve.shutdown()
            state["port"] = free_loopback_port()
            serve.start(http_options={"host": "127.0.0.1", "port": state["port"]})
        return state["port"]

    yield port
    if _serve_running():
        serve.shutdown()
