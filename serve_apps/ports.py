"""A free TCP port on 127.0.0.1 for a local Serve (or test server) that Ray cannot take first.

Picking port 0 and closing the socket hands out a port from the kernel's ephemeral range, and the
processes a local Ray keeps starting bind ephemeral ports too: one of them can take the port before
Serve's proxy binds it ("Failed to bind to address 127.0.0.1:<port>", seen in ``make demo``). So the
port is drawn below the ephemeral range and above Ray's default worker ports (10002-19999).
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

RAY_WORKER_PORTS_END = 19999  # Ray's default max_worker_port
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")  # Linux; 32768 elsewhere


def _ephemeral_start() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_loopback_port(attempts: int = 200) -> int:
    """A port between Ray's worker ports and the ephemeral range that nothing listens on now."""
    candidates = range(RAY_WORKER_PORTS_END + 1, _ephemeral_start())
    for port in random.sample(candidates, min(attempts, len(candidates))):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 in {candidates.start}-{candidates.stop - 1}")
