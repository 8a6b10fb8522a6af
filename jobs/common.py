"""What every Ray job shares: connecting to Ray and the Ray Data settings for portable shards.

A job run with no cluster address starts a local Ray (``python jobs/X.py`` on a laptop); under
``ray job submit`` Ray sets ``RAY_ADDRESS`` and the job joins that cluster. Tests that already
called ``ray.init()`` in-process keep their cluster.
"""

from __future__ import annotations

import os

import ray

_FORWARDED_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


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


def configure_data_context() -> None:
    """Ray Data settings every job uses.

    Tensor columns are written as the standard ``arrow.fixed_shape_tensor`` extension type so any
    pyarrow reader (without Ray) opens our shards; progress bars stay on.
    """
    from ray.data._internal.tensor_extensions.arrow import FixedShapeTensorFormat

    ctx = ray.data.DataContext.get_current()
    ctx.arrow_fixed_shape_tensor_format = FixedShapeTensorFormat.ARROW_NATIVE
    ctx.enable_progress_bars = True
