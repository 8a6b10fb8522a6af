"""What every Ray job shares: the Ray options (address, GPUs), connecting to Ray, the Ray Data
settings for portable shards, and one task loop.

A job run with no cluster address starts a local Ray (``python jobs/X.py`` on a laptop); under
``ray job submit`` Ray sets ``RAY_ADDRESS`` and the job joins that cluster. Tests that already
called ``ray.init()`` in-process keep their cluster.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import ray
from tqdm import tqdm

K = TypeVar("K")

_FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


@dataclass(frozen=True)
class RayOptions:
    """How a job uses Ray (the same flags on every job).

    Args:
        address: Ray cluster to join; default: ``RAY_ADDRESS`` (set by ``ray job submit``), else a
            local Ray started for the job.
        gpu: ``auto`` uses GPUs when the cluster has them, ``on`` requires them (``--gpu`` alone
            means on), ``off`` runs on CPUs only.
    """

    address: str | None = None
    gpu: Literal["auto", "on", "off"] = field(default="auto", metadata={"const": "on"})


def connect(options: RayOptions) -> bool:
    """Joins (or starts) Ray and says whether the job runs on GPUs.

    Raises:
        ValueError: ``--gpu on`` on a cluster without GPUs.
    """
    init_ray(options.address)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    if options.gpu == "on" and not gpus:
        raise ValueError("--gpu on, but the Ray cluster has no GPU")
    return options.gpu == "on" or (options.gpu == "auto" and gpus > 0)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connects to Ray once per process.

    ``AWS_ENDPOINT_URL`` must be in the environment before this call for ``s3://`` storage on a
    custom endpoint: Ray workers inherit the driver's environment only at start.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # A local Ray inherits this process's environment; a cluster gets the storage endpoint
        # (never credentials: on a cluster those come from the node's IAM role).
        env_vars = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
        ray.init(address=address, runtime_env={"env_vars": env_vars} if env_vars else None)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False)
    configure_data_context()
    _stop_on_sigterm()


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _stop_on_sigterm() -> None:
    """SIGTERM (``ray job stop``, ``kill``) interrupts the driver like Ctrl-C, so the job stops its
    Ray work and records what is done (``vlm3r_core.cli.run_job``). Set after ``ray.init``, whose
    core worker installs a handler that aborts the process on the spot."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def configure_data_context() -> None:
    """Ray Data settings every job uses.

    Tensor columns are written as the standard ``arrow.fixed_shape_tensor`` extension type so any
    pyarrow reader (without Ray) opens our shards.
    """
    from ray.data._internal.tensor_extensions.arrow import FixedShapeTensorFormat

    ray.data.DataContext.get_current().arrow_fixed_shape_tensor_format = FixedShapeTensorFormat.ARROW_NATIVE


def run_tasks(
    fn: Callable[..., Any], calls: Sequence[tuple[K, tuple]], num_cpus: float, desc: str
) -> Iterator[tuple[K, Any, str | None]]:
    """Runs ``fn(*args)`` as one Ray task per ``(key, args)`` and yields ``(key, result, error)``
    as the tasks finish, with a progress bar.

    Tasks are not retried: a task that raises, or whose worker dies, yields ``error`` (the
    exception's type and message) and ``result`` None, and the others go on.
    """
    remote = ray.remote(num_cpus=num_cpus, max_retries=0)(fn)
    pending = {remote.remote(*args): key for key, args in calls}
    with tqdm(total=len(pending), desc=desc, unit="task") as bar:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # back in Python each second: signals
            if not ready:
                continue
            ref = ready[0]
            key = pending.pop(ref)
            try:
                yield key, ray.get(ref), None
            except ray.exceptions.RayError as e:  # the task raised, or its worker died
                cause = getattr(e, "cause", None) or e
                yield key, None, f"{type(cause).__name__}: {cause}"
            bar.update(1)
