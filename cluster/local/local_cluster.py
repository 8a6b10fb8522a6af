"""A real multi-node Ray cluster on loopback: a head and worker nodes, each its own ``ray start``.

    cluster/local/up.sh                  # head + 2 workers; prints the exports for `ray job submit`
    source /tmp/vlm3r-local/env.sh       # RAY_ADDRESS (Jobs API), RAY_AUTH_MODE=token, RAY_AUTH_TOKEN
    ray job submit --working-dir . -- python jobs/make_scenes.py ...
    cluster/local/down.sh                # stops exactly the processes up.sh started

(``python cluster/local/local_cluster.py up|down|status|kill-raylet|restart [--state DIR]`` is the
same thing; the shell scripts only pick the interpreter.)

The cluster is laid out like the KubeRay clusters in ``cluster/kuberay/``:

- ``head``: GCS, dashboard (the Jobs API), job drivers, the Serve controller and proxy; no CPUs, so
  no task or actor of a job runs there (``num-cpus: 0`` as on the real heads).
- ``worker-1``, ``worker-2``: 4 logical CPUs each (on any number of cores) and the custom resource
  ``gpu_a10g`` (2 per node), which stands in for the GPUs of the ``a10g`` pool: the Serve config
  ``cluster/local/serve-local.yaml`` asks one per model replica where the GPU config asks one GPU.
  ``jobs/train.py --num-workers 2 --cpus-per-worker 2.5`` puts one training worker on each node.

Every node is a separate ``ray start --block`` process with its own temp dir (sessions, logs,
sockets), its own ports (all picked free) and token authentication on (``RAY_AUTH_MODE=token`` with
a token made for this cluster; nothing is written to ``~/.ray``). The dashboard (Jobs API, State
API, Serve REST API) and the Serve HTTP proxy listen on 127.0.0.1. Ray's own node-to-node ports
(GCS, raylets, object managers) listen on every interface and the nodes reach each other by the
machine's IP (``ray start`` turns ``--node-ip-address 127.0.0.1`` into that IP), with token
authentication on as everywhere else.

It does not capture anyone's ``ray.init()``: a ``ray.init()`` without an address joins the cluster
named in ``<default temp dir>/ray/ray_current_cluster``, which ``ray start`` writes into its own
``--temp-dir``; here that is the node's temp dir under the state folder, never ``/tmp/ray``. The
cluster's address is only in ``<state>/env.sh`` and ``<state>/cluster.json``; nothing is exported
into the caller's environment.

The nodes inherit the caller's environment (put ``AWS_ENDPOINT_URL`` and credentials there for an
S3 endpoint such as moto), with ``PATH`` starting at this interpreter's folder (so a job's
``python`` is this virtualenv's) and ``PYTHONPATH`` at this checkout (the project installed on the
nodes, as in the cluster image).

Node loss: ``kill-raylet worker-1`` SIGKILLs that node's raylet; its ``ray start --block`` sees the
raylet die, kills the node's other processes and exits, and the GCS marks the node dead.
``restart worker-1`` starts the node again (same resources, a new session).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_STATE = Path(os.environ.get("VLM3R_LOCAL_CLUSTER", "/tmp/vlm3r-local"))
WORKER_CPUS = 4
GPU_RESOURCE = "gpu_a10g"
GPU_PER_WORKER = 2
OBJECT_STORE_BYTES = 400 * 2**20
NODE_LABEL = "vlm3r-node"  # every node carries its name as this Ray node label


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    temp_dir: str
    args: list[str]
    pid: int = 0
    log: str = ""


@dataclass
class Cluster:
    """What ``up`` started, saved as ``<state>/cluster.json`` for the other commands."""

    state_dir: str
    token: str = field(repr=False)  # never in a repr (test failure reports, logs)
    gcs_port: int
    dashboard_port: int
    python: str
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def client_env(self) -> dict[str, str]:
        """What a client needs in its environment: ``ray job submit`` reads ``RAY_ADDRESS``, the
        ``serve`` CLI ``RAY_DASHBOARD_ADDRESS``; both send the token."""
        return {"RAY_ADDRESS": self.dashboard_url, "RAY_DASHBOARD_ADDRESS": self.dashboard_url,
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}  # fmt: skip

    def node_env(self) -> dict[str, str]:
        """The environment of every node: the caller's, plus auth, interpreter and checkout."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        bin_dir = str(Path(self.python).parent)
        env.update(
            # As on KubeRay pods: Ray code on the nodes that looks up "the" cluster without an address
            # (Ray Train's PlacementGroupCleaner, the State API) finds this one, not any other Ray
            # instance running on the machine. Only the nodes' processes have it.
            RAY_ADDRESS=self.gcs_address,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN=self.token,
            RAY_USAGE_STATS_ENABLED="0",
            PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p),
        )
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
        return env

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def save(self) -> None:
        """Writes ``cluster.json`` and ``env.sh``, readable by the owner only (they hold the token)."""
        env = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in self.client_env().items())
        for name, text in (("cluster.json", json.dumps(asdict(self), indent=1)), ("env.sh", env)):
            path = Path(self.state_dir) / name
            tmp = path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            tmp.rename(path)

    @classmethod
    def load(cls, state_dir: str | Path) -> Cluster:
        data = json.loads((Path(state_dir) / "cluster.json").read_text())
        data["nodes"] = {k: Node(**v) for k, v in data["nodes"].items()}
        return cls(**data)

    # --- HTTP to the dashboard (the State API) --------------------------------------------------

    def get(self, path: str, timeout: float = 10.0) -> dict:
        request = urllib.request.Request(self.dashboard_url + path, headers=self.auth_headers())
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())

    def alive_nodes(self) -> list[dict]:
        """ALIVE nodes as the GCS sees them: ``node_id``, ``node_name``/``node_ip``, ``resources_total``."""
        data = self.get("/api/v0/nodes?limit=100&detail=true")
        return [n for n in data["data"]["result"]["result"] if n["state"] == "ALIVE"]

    def node_ids(self) -> dict[str, str]:
        """Our node name -> Ray node id, for the ALIVE nodes (by their ``vlm3r-node`` label)."""
        return {n["labels"][NODE_LABEL]: n["node_id"] for n in self.alive_nodes() if NODE_LABEL in n.get("labels", {})}


# --- processes --------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    import psutil

    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _processes(pids: list[int]) -> list:
    """``psutil.Process`` handles of ``pids`` and all their descendants, taken now: a handle checks
    the process's start time, so it never signals a later process that reuses the PID."""
    import psutil

    out = []
    for pid in pids:
        try:
            root = psutil.Process(pid)
            out += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return out


def _is_node(node: Node) -> bool:
    """Whether ``node.pid`` is still that node's ``ray start`` (and not a process that got its PID since)."""
    import psutil

    try:
        cmdline = psutil.Process(node.pid).cmdline()
    except psutil.NoSuchProcess:
        return False
    return "start" in cmdline and node.temp_dir in cmdline and _alive(node.pid)


def _start_node(cluster: Cluster, node: Node) -> None:
    log = Path(cluster.state_dir) / f"{node.name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [str(Path(cluster.python).parent / "ray"), "start", *node.args, "--block"],
            env=cluster.node_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # our own process group: a Ctrl-C in the caller's terminal is not ours
            cwd=cluster.state_dir,
        )
    node.pid, node.log = proc.pid, str(log)


def _node_args(name: str, temp_dir: str, gcs_port: int, dashboard_port: int) -> list[str]:
    common = [
        "--temp-dir", temp_dir,
        "--object-store-memory", str(OBJECT_STORE_BYTES),
        "--min-worker-port", "0", "--max-worker-port", "0",  # worker ports: any free port
        "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()),
        "--metrics-export-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()),
        "--num-gpus", "0",
        "--labels", f"{NODE_LABEL}={name}",
        "--disable-usage-stats",
    ]  # fmt: skip
    if name == "head":
        return [
            "--head", "--port", str(gcs_port),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard_port), "--include-dashboard", "true",
            "--ray-client-server-port", str(free_port()),
            "--num-cpus", "0",
            *common,
        ]  # fmt: skip
    return [
        "--address", f"127.0.0.1:{gcs_port}",
        "--num-cpus", str(WORKER_CPUS),
        "--resources", json.dumps({GPU_RESOURCE: GPU_PER_WORKER}),
        *common,
    ]  # fmt: skip


class NodeExited(RuntimeError):
    pass


def wait_for(cluster: Cluster, names: list[str], timeout_s: float) -> None:
    """Waits until the named nodes are ALIVE in the GCS (and the dashboard answers)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        for name in names:
            if not _alive(cluster.nodes[name].pid):
                raise NodeExited(f"node {name} exited while starting; see {cluster.nodes[name].log}")
        try:
            ids = cluster.node_ids()
            if all(name in ids for name in names):
                return
            last = f"alive: {sorted(ids)}"
        except (OSError, urllib.error.URLError, KeyError, ValueError) as e:
            last = f"{type(e).__name__}: {e}"
        time.sleep(1.0)
    raise TimeoutError(f"nodes {names} not up within {timeout_s:.0f} s ({last})")


def _start_and_wait(cluster: Cluster, node: Node, timeout_s: float, attempts: int = 5) -> None:
    """Starts ``node`` and waits for it; a node whose start fails is started again.

    On a loaded machine a node can die while starting: its raylet gives the dashboard agent a
    fixed time to come up (``Timed out waiting for file .../dashboard_agent_listen_port_...`` in
    ``raylet.out``), and importing the agent can take longer than that.
    """
    for attempt in range(1, attempts + 1):
        _start_node(cluster, node)
        cluster.save()
        try:
            wait_for(cluster, [node.name], timeout_s)
            return
        except NodeExited:
            if attempt == attempts:
                raise
            print(f"[local-cluster] {node.name} exited while starting (attempt {attempt}); starting it again",
                  file=sys.stderr, flush=True)  # fmt: skip


def up(state_dir: Path, workers: int = 2, timeout_s: float = 240.0) -> Cluster:
    """Starts head + ``workers`` worker nodes; returns the cluster (saved in ``state_dir``)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if (state_dir / "cluster.json").exists():
        existing = Cluster.load(state_dir)
        if any(_is_node(n) for n in existing.nodes.values()):
            raise RuntimeError(f"a cluster from {state_dir} is still running; run down first")
    cluster = Cluster(str(state_dir), secrets.token_hex(32), free_port(), free_port(), sys.executable)
    names = ["head"] + [f"worker-{i + 1}" for i in range(workers)]
    try:
        for name in names:  # one at a time: on 2 cores, starting nodes side by side only slows each down
            temp_dir = str(state_dir / name)
            node = Node(name, temp_dir, _node_args(name, temp_dir, cluster.gcs_port, cluster.dashboard_port))
            cluster.nodes[name] = node
            _start_and_wait(cluster, node, timeout_s)
    except BaseException:
        down(cluster)
        raise
    return cluster


def _stop_trees(pids: list[int], grace_s: float) -> None:
    """SIGTERM to each of ``pids`` (``ray start --block`` processes, which then stop their node), and
    SIGKILL to whatever of their process trees is left after ``grace_s``."""
    import psutil

    trees = _processes(pids)
    for proc in [p for p in trees if p.pid in pids]:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(trees, timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)


def down(cluster: Cluster, grace_s: float = 20.0) -> None:
    """Stops every node this cluster started: the workers together, then the head."""
    workers = [n.pid for name, n in cluster.nodes.items() if name != "head" and _is_node(n)]
    _stop_trees(workers, grace_s)
    head = cluster.nodes.get("head")
    if head and _is_node(head):
        _stop_trees([head.pid], grace_s)


def kill_raylet(cluster: Cluster, name: str) -> int:
    """SIGKILLs the raylet of node ``name`` (a node lost); returns its PID."""
    import psutil

    node = cluster.nodes[name]
    if not _is_node(node):
        raise RuntimeError(f"node {name} is not running")
    for pid in _descendants(node.pid):
        try:
            if psutil.Process(pid).name() == "raylet":
                os.kill(pid, signal.SIGKILL)
                return pid
        except psutil.NoSuchProcess:
            continue
    raise RuntimeError(f"no raylet under node {name} (pid {node.pid})")


def wait_node_gone(cluster: Cluster, name: str, timeout_s: float = 60.0) -> None:
    """Waits until node ``name``'s ``ray start`` has exited and the GCS no longer lists it ALIVE."""
    node = cluster.nodes[name]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(node.pid) and name not in cluster.node_ids():
            try:
                os.waitpid(node.pid, os.WNOHANG)
            except ChildProcessError:
                pass
            return
        time.sleep(0.5)
    raise TimeoutError(f"node {name} still alive {timeout_s:.0f} s after its raylet was killed")


def restart(cluster: Cluster, name: str, timeout_s: float = 180.0, attempts: int = 5) -> None:
    """Starts node ``name`` again (after it was lost), with the same resources."""
    node = cluster.nodes[name]
    if _is_node(node):
        raise RuntimeError(f"node {name} is still running (pid {node.pid})")
    _start_and_wait(cluster, node, timeout_s, attempts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "kill-raylet", "restart"])
    parser.add_argument("node", nargs="?", help="node name for kill-raylet / restart (worker-1, ...)")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="state folder (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="worker nodes (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.command == "up":
        started = time.monotonic()
        cluster = up(args.state, args.workers)
        print(f"[local-cluster] head + {args.workers} workers up in {time.monotonic() - started:.0f} s; "
              f"dashboard/Jobs API {cluster.dashboard_url}, GCS {cluster.gcs_address}")  # fmt: skip
        print(f"[local-cluster] to use it: source {args.state}/env.sh    to stop it: cluster/local/down.sh")
        return 0
    if not (args.state / "cluster.json").exists():
        print(f"[local-cluster] no cluster in {args.state}", file=sys.stderr)
        return 1 if args.command != "down" else 0
    cluster = Cluster.load(args.state)
    if args.command == "down":
        down(cluster)
        print(f"[local-cluster] stopped {', '.join(cluster.nodes)}")
        return 0
    if args.command == "status":
        ids = cluster.node_ids()
        for name, node in cluster.nodes.items():
            print(f"{name:10s} pid {node.pid:<8d} {'ALIVE' if name in ids else 'DOWN':6s} {ids.get(name, '')}")
        return 0
    if not args.node or args.node not in cluster.nodes:
        parser.error(f"name a node: {', '.join(cluster.nodes)}")
    if args.command == "kill-raylet":
        pid = kill_raylet(cluster, args.node)
        wait_node_gone(cluster, args.node)
        print(f"[local-cluster] killed the raylet of {args.node} (pid {pid}); node is gone")
        return 0
    restart(cluster, args.node)
    print(f"[local-cluster] {args.node} is back")
    return 0


if __name__ == "__main__":
    sys.exit(main())
