"""The used-by commands on a real multi-node Ray cluster: ``cluster/local`` (a head and two worker
nodes on loopback, each its own ``ray start``, token auth on), jobs submitted with ``ray job submit
--working-dir . -- python jobs/X.py`` reading and writing ``s3://`` on moto, and a worker node lost
in the middle of precompute and in the middle of training (and started again, as an autoscaler
replaces a lost node).

CI-sized in ``make test`` (a few minutes on 2 cores): the scenes and QA rows are written to S3 by
the library in this process, then precompute_tokens and train (2 workers on the 2 nodes, ZeRO-2) go
through the Jobs API, each losing a node. ``--cluster-full`` (``make cluster-test``) submits every
job (make_scenes, generate_qa, precompute_tokens, train, evaluate) at a larger size and runs the
Serve autoscaling benchmark on the cluster (each model deployment scaling up on its own and down).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import boto3
import numpy as np
import pytest

from benchmarks.bench_serve_autoscaling import DEPLOYMENTS, load_local_cluster
from tests.cluster.submit import ROOT, run_job, submit
from vlm3r_core import storage
from vlm3r_core.scene import list_scenes

pytestmark = pytest.mark.cluster

SMALL_SCENES = ["--width", "160", "--height", "120", "--fps", "5", "--num-cpus-per-scene", "0.5"]


@pytest.fixture(scope="module")
def sizes(cluster_full) -> dict:
    if cluster_full:
        return {"scenes": 6, "val_fraction": "0.34", "duration": "4", "qa_cap": "2", "steps": 60, "every": 10,
                "eval_limit": "40"}  # fmt: skip
    # Two training videos: one per training worker (evaluation, which needs val scenes, is full-size only).
    # Enough steps after the first checkpoint that the node is lost mid-run on a fast idle machine too
    # (a tiny step takes about 0.2 s: 4 steps finished in a second there, before the loss; with 30
    # steps the loss once came after the second checkpoint).
    return {"scenes": 2, "val_fraction": "0", "duration": "2", "qa_cap": "1", "steps": 60, "every": 10}


WORKERS = ["worker-1", "worker-2"]


def test_separate_nodes_with_a_gpu_pool_stand_in_and_token_auth(local_cluster):
    nodes = {n["labels"]["vlm3r-node"]: n for n in local_cluster.alive_nodes()}
    assert sorted(nodes) == ["head", *WORKERS]
    assert nodes["head"]["resources_total"].get("CPU", 0) == 0  # no job work on the head
    for name in WORKERS:
        assert nodes[name]["resources_total"]["CPU"] == 4
        assert nodes[name]["resources_total"]["gpu_a10g"] == 2
    # Every node is its own `ray start` with its own temp dir.
    pids = {n.pid for n in local_cluster.nodes.values()}
    assert len(pids) == 3 and len({n.temp_dir for n in local_cluster.nodes.values()}) == 3
    # The Jobs API refuses a request without the token.
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{local_cluster.dashboard_url}/api/jobs/", timeout=10)
    assert refused.value.code == 401


def test_a_plain_ray_init_elsewhere_still_starts_its_own_cluster(local_cluster, tmp_path):
    """Another process on this machine (another engineer's test) calls ``ray.init()`` with no address
    while our cluster runs: it gets a cluster of its own, and ours is untouched."""
    script = (
        "import json, ray; ray.init(num_cpus=1, include_dashboard=False); "
        "print('RESULT', json.dumps({'gcs': ray.get_runtime_context().gcs_address, "
        "'nodes': [n.get('Labels', {}) for n in ray.nodes() if n['Alive']]})); ray.shutdown()"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT", 1)[1])
    assert result["gcs"].rsplit(":", 1)[1] != str(local_cluster.gcs_port)
    assert len(result["nodes"]) == 1 and not any("vlm3r-node" in labels for labels in result["nodes"])
    assert sorted(local_cluster.node_ids()) == ["head", *WORKERS]
    # Why: `ray start` wrote our address into the head's own temp dir, not the default one.
    head_file = Path(local_cluster.nodes["head"].temp_dir) / "ray_current_cluster"
    assert head_file.read_text().strip().endswith(f":{local_cluster.gcs_port}")
    default_file = Path("/tmp/ray/ray_current_cluster")
    assert not default_file.exists() or not default_file.read_text().strip().endswith(f":{local_cluster.gcs_port}")


def test_the_working_dir_upload_leaves_out_venvs_data_and_caches(tmp_path):
    """``.rayignore`` alone (``.gitignore`` may be switched off) keeps a developer checkout's venvs,
    data roots, caches and VCS out of ``--working-dir .``; the project's code travels."""
    from ray._private.runtime_env.packaging import create_package

    checkout = tmp_path / "checkout"
    kept = ["jobs/train.py", "vlm3r_core/vlm/tiny_tokenizer/tokenizer.json", "README.md", ".rayignore"]
    left_out = [".venv/bin/python", ".venv-tools/bin/checkov", ".git/objects/ab/cdef", "vlm3r-data/scenes/x/video.mp4",
                "jobs/__pycache__/train.cpython-311.pyc", ".pytest_cache/v/x", ".hypothesis/examples/x",
                "vlm3r.egg-info/PKG-INFO", "weights/cut3r_512_dpt_4_64.pth", "runs/model.safetensors",
                "tokens/part-0.parquet"]  # fmt: skip
    for name in kept + left_out:
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        (checkout / name).write_bytes((ROOT / name).read_bytes() if (ROOT / name).is_file() else b"x" * 1000)
    package = tmp_path / "pkg.zip"
    create_package(str(checkout), package, include_gitignore=False)
    assert sorted(zipfile.ZipFile(package).namelist()) == sorted(kept)


def _upload_size(cluster) -> tuple[float, list[str]]:
    """Size (MiB) and top-level entries of the working dir the head unpacked for the jobs."""
    head = Path(cluster.nodes["head"].temp_dir) / "session_latest" / "runtime_resources" / "working_dir_files"
    packages = [p for p in head.glob("_ray_pkg_*") if p.is_dir()]
    assert packages, f"no unpacked working dir under {head}"
    package = max(packages, key=lambda p: p.stat().st_mtime)
    size = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
    return size / 2**20, sorted(p.name for p in package.iterdir())


def _alive_actors(cluster, class_part: str) -> list[str]:
    """Node names of the ALIVE actors whose class name contains ``class_part``."""
    data = cluster.get("/api/v0/actors?limit=2000&detail=true&filter_keys=state&filter_predicates=%3D&filter_values=ALIVE")
    names = {v: k for k, v in cluster.node_ids().items()}
    return [names.get(a["node_id"], "?") for a in data["data"]["result"]["result"] if class_part in a["class_name"]]


def _lose_node(cluster, name: str) -> dict:
    """SIGKILLs node ``name``'s raylet and waits until its ``ray start`` is gone and the GCS has
    marked it dead."""
    lc = load_local_cluster()
    old_id = cluster.node_ids()[name]
    started = time.monotonic()
    pid = lc.kill_raylet(cluster, name)
    lc.wait_node_gone(cluster, name, timeout_s=120)
    return {"node": name, "node_id": old_id, "raylet_pid": pid, "dead_after_s": round(time.monotonic() - started, 1)}


def _wait_then_lose_node(cluster, sub, ready, choose, timeout_s: float) -> dict:
    """While the job runs: when ``ready()`` says so, loses the node ``choose()`` names."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sub.proc.poll() is not None:
            pytest.fail(f"the job ended before the node could be lost:\n{sub.output[-3000:]}")
        if ready():
            return _lose_node(cluster, choose())
        time.sleep(0.5)
    pytest.fail(f"the job did not get far enough to lose a node within {timeout_s:.0f} s:\n{sub.output[-3000:]}")


def _replace(cluster, lost: dict) -> str:
    """Starts a replacement for the lost node, with its name and resources (as an autoscaler replaces a
    lost machine); returns its (new) Ray node id."""
    load_local_cluster().restart(cluster, lost["node"], attempts=10)
    new_id = cluster.node_ids()[lost["node"]]
    assert new_id != lost["node_id"]
    return new_id


def _keys(bucket: str, prefix: str) -> list[str]:
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def _job_succeeded(cluster, sub) -> bool:
    """Whether ``ray job status <id>``, as a user types it (address and token from the environment),
    says the job succeeded."""
    env = {**os.environ, **cluster.client_env()}
    done = subprocess.run([str(Path(sys.executable).with_name("ray")), "job", "status", sub.job_id], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    return f"Job '{sub.job_id}' succeeded" in done.stdout + done.stderr


def _write_inputs_here(root: str, sizes: dict) -> None:
    """CI size: the scenes and QA rows of ``make_scenes`` and ``generate_qa`` at the same settings,
    written to S3 by the same library calls in this process (one scene after the other, no Ray) --
    the full run (``--cluster-full``) submits both jobs."""
    from datagen.dataset import write_outputs
    from datagen.qa import process_scene
    from datagen.synthetic.batch import plan_scenes, run_scene_task
    from jobs.generate_qa import parse_args as qa_args
    from jobs.make_scenes import parse_args as scene_args
    from vlm3r_core.scene import list_scenes

    scene_cfg = scene_args(["--num-scenes", str(sizes["scenes"]), "--out", root, "--seed", "0", "--val-fraction",
                            sizes["val_fraction"], "--duration-s", sizes["duration"], *SMALL_SCENES])  # fmt: skip
    for task in plan_scenes(scene_cfg.num_scenes, scene_cfg.seed, scene_cfg.val_fraction):
        run_scene_task(root, task, scene_cfg.scene)
    qa_cfg = qa_args(["--scenes", root, "--out", root, "--seed", "0", "--per-scene-cap", sizes["qa_cap"]])
    scenes = list_scenes(root)
    failed = [r for r in (process_scene(s, root, qa_cfg.qa) for s in scenes) if r.error]
    assert not failed, failed
    write_outputs(root, qa_cfg.qa, scenes, [], qa_cfg.dataset)


@pytest.mark.timeout(3600)
def test_the_pipeline_through_the_jobs_api_survives_lost_worker_nodes(local_cluster, cluster_full, moto_s3, sizes,
                                                                      tmp_path):  # fmt: skip
    """precompute_tokens (a node lost) -> train (2 workers on 2 nodes, ZeRO-2; a node lost), each submitted
    with ``ray job submit --working-dir . -- python jobs/X.py``, all data on s3://; at full size
    make_scenes, generate_qa and evaluate are submitted too."""
    root = f"{moto_s3}/vlm3r-data"
    bucket = moto_s3.removeprefix("s3://")
    n = sizes["scenes"]

    if cluster_full:
        run_job(local_cluster, ["jobs/make_scenes.py", "--num-scenes", str(n), "--out", root, "--seed", "0",
                                "--val-fraction", sizes["val_fraction"], "--duration-s", sizes["duration"],
                                *SMALL_SCENES], tmp_path / "make_scenes.log", 900)  # fmt: skip
        run_job(local_cluster, ["jobs/generate_qa.py", "--scenes", root, "--out", root, "--seed", "0",
                                "--per-scene-cap", sizes["qa_cap"]], tmp_path / "generate_qa.log", 900)  # fmt: skip
    else:
        _write_inputs_here(root, sizes)
    video_ids = {f"synthetic/{s.dir.rsplit('/', 1)[1]}" for s in list_scenes(root)}
    assert len(video_ids) == n
    train_qa, val_benchmark = f"{root}/qa/conversations/train", f"{root}/qa/benchmark/val"  # split folders
    counts = storage.read_json(f"{root}/qa/manifest.json")["counts"]
    assert sum(counts["train"].values()) and (sum(counts.get("val", {}).values()) or not cluster_full), counts

    # Precompute, one video per batch on one encoder actor: once the first shard is written, the node
    # of the actor is lost; Ray Data starts the actor again on the node left and finishes.
    args = ["jobs/precompute_tokens.py", "--scenes", root, "--out", root, "--preset", "tiny", "--with-vision-features",
            "--batch-size", "1", "--num-actors", "1"]  # fmt: skip
    started = time.monotonic()
    sub = submit(local_cluster, args, tmp_path / "precompute.log")
    encoder_nodes: list[str] = []

    def first_shard() -> bool:
        if not any(k.endswith(".parquet") for k in _keys(bucket, "vlm3r-data/tokens/")):
            return False
        encoder_nodes[:] = _alive_actors(local_cluster, "TokenEncoder")
        return bool(encoder_nodes)

    lost = _wait_then_lose_node(local_cluster, sub, first_shard, lambda: encoder_nodes[0], timeout_s=900)
    print(f"[cluster] precompute: lost {lost['node']} (it held the encoder actor) after the first shard", flush=True)
    assert sub.wait(900) == 0, sub.output[-4000:]
    print(f"[cluster] jobs/precompute_tokens.py: {time.monotonic() - started:.0f} s", flush=True)
    mib, entries = _upload_size(local_cluster)
    print(f"[cluster] working-dir upload: {mib:.2f} MiB unpacked on the head: {entries}", flush=True)
    assert {"jobs", "vlm3r_core", "datagen", "serve_apps"} <= set(entries)
    assert not {".venv", ".git", "vlm3r-data", ".venv-tools"} & set(entries) and mib < 5
    tokens = f"{root}/tokens/tiny-112px-32f-vf"
    _check_tokens(tokens, video_ids, sub.summary("precompute_tokens"))
    # The log says what happened: the actor's node died and the pool went on.
    assert "Raylet is terminated" in sub.output or "has been marked dead" in sub.output or "died" in sub.output
    assert _job_succeeded(local_cluster, sub)
    _replace(local_cluster, lost)  # training needs both worker nodes

    # Train: 2 workers of 2.5 CPUs, so one per worker node. Once the first checkpoint is written, the
    # node of one of them is lost; Ray Train restarts both workers from it once the replacement node
    # has joined (the worker group waits for its resources).
    out = f"{root}/runs/tiny"
    steps, every = sizes["steps"], sizes["every"]
    args = ["jobs/train.py", "--qa", train_qa, "--tokens", tokens, "--out", out, "--preset", "tiny",
            "--num-workers", "2", "--cpus-per-worker", "2.5", "--zero-stage", "2", "--max-steps", str(steps),
            "--checkpoint-every", str(every), "--micro-batch-size", "1", "--lr", "1e-3", "--max-failures", "2"]  # fmt: skip
    started = time.monotonic()
    sub = submit(local_cluster, args, tmp_path / "train.log")
    before: list[str] = []

    def first_checkpoint() -> bool:
        # Registered, not only written: Ray Train writes its checkpoint manager's snapshot once the
        # controller has the reported checkpoint (metrics.jsonl is written before the report).
        if not storage.exists(f"{out}/checkpoints/vlm3r-lora/checkpoint_manager_snapshot.json"):
            return False
        before[:] = _alive_actors(local_cluster, "RayTrainWorker")
        return len(before) == 2

    lost = _wait_then_lose_node(local_cluster, sub, first_checkpoint, lambda: sorted(before)[-1], timeout_s=1800)
    new_id = _replace(local_cluster, lost)  # meanwhile the worker group waits for resources
    after: list[str] = []
    while sub.proc.poll() is None and len(after) < 2:
        after = _alive_actors(local_cluster, "RayTrainWorker")
        time.sleep(1.0)
    print(f"[cluster] train: workers on {sorted(before)}, lost {lost['node']}, then on {sorted(after)}", flush=True)
    assert sub.wait(1800) == 0, sub.output[-4000:]
    print(f"[cluster] jobs/train.py: {time.monotonic() - started:.0f} s", flush=True)
    assert sorted(before) == WORKERS  # one worker per node
    # Again one per node, the replacement one of them, when the restarted group was seen (on a fast
    # machine the job can finish while the replacement node is still being confirmed; a worker needs
    # 2.5 of a node's CPUs, so a restarted group of 2 that trained at all ran on both nodes).
    assert not after or sorted(after) == WORKERS, after
    rows = storage.read_jsonl(f"{out}/metrics.jsonl")
    # One report per checkpoint, each step once; the first attempt's reports (at least the first
    # checkpoint's), then the reports of the attempt that restored the last checkpoint before the loss.
    assert [r["step"] for r in rows] == list(range(every, steps + 1, every))
    resumed = [r["resumed_from_step"] for r in rows]
    first = resumed.count(None)
    restored = resumed[first] if first < len(rows) else None
    assert first >= 1 and restored is not None and restored == rows[first - 1]["step"], resumed
    assert resumed == [None] * first + [restored] * (len(rows) - first), resumed
    per_step = rows[0]["samples_seen"] / every
    assert [r["samples_seen"] for r in rows] == [per_step * r["step"] for r in rows]  # no step lost or counted twice
    assert all(np.isfinite(r["loss"]) for r in rows)
    log = sub.output
    assert "[FailurePolicy] RETRY" in log and "Training failed due to worker errors" in log
    assert f"resumed from {restored}" in sub.summary("train")
    assert _job_succeeded(local_cluster, sub)
    assert storage.exists(f"{out}/model/config.json")
    print(f"[cluster] {lost['node']} was replaced by node {new_id[:8]}", flush=True)

    if cluster_full:
        sub = run_job(local_cluster, ["jobs/evaluate.py", "--model", f"{out}/model", "--benchmark", val_benchmark,
                                      "--tokens", tokens, "--out", f"{root}/eval/tiny", "--num-actors", "2",
                                      "--limit", sizes["eval_limit"]], tmp_path / "evaluate.log", 900)  # fmt: skip
        answered = storage.read_jsonl(f"{root}/eval/tiny/predictions.jsonl")
        assert answered and "0 failed" in sub.summary("evaluate"), sub.summary("evaluate")


def _check_tokens(tokens: str, video_ids: set[str], summary: str) -> None:
    """Every video once in the ledger and once in the shards, nothing failed, and the stored tokens
    equal an encoding of the same video in this process."""
    from vlm3r_core.precompute import TokenEncoder, decode_videos, encoder_info, list_videos, model_config
    from vlm3r_core.tokens import iter_video_tokens, read_token_table

    assert f"{len(video_ids)} done" in summary and "0 failed" in summary, summary
    manifest = storage.read_jsonl(f"{tokens}/manifest.jsonl")
    assert sorted(r["video_id"] for r in manifest) == sorted(video_ids)  # once each
    errors = f"{tokens}/errors.jsonl"
    assert not storage.exists(errors) or not storage.read_jsonl(errors)
    stored = {v.video_id: v for v in iter_video_tokens(read_token_table(tokens))}  # raises on a video stored twice
    assert sorted(stored) == sorted(video_ids)
    root = tokens.rsplit("/tokens/", 1)[0]
    sources = [s for s in list_videos(root)]
    cfg = model_config("tiny")
    encoder = TokenEncoder(cfg, encoder_info(cfg, True), out_dir="unused")
    batch = decode_videos({"video_id": np.array([s.video_id for s in sources], dtype=object),
                           "scene": np.array([s.scene for s in sources], dtype=object),
                           "video": np.array([s.video for s in sources], dtype=object)}, cfg.num_frames)  # fmt: skip
    for video_id, tokens_now in zip(batch["video_id"], encoder.encode(list(batch["frames"])), strict=True):
        for name, value in tokens_now.items():
            np.testing.assert_allclose(getattr(stored[video_id], name).astype(np.float32), value, rtol=2e-3,
                                       atol=2e-3, err_msg=f"{video_id} {name}")  # fmt: skip


@pytest.mark.timeout(1800)
def test_serve_deploy_puts_model_replicas_on_the_gpu_pool_and_scales_each_on_its_own(local_cluster, cluster_full,
                                                                                     tmp_path):  # fmt: skip
    """``serve deploy cluster/local/serve-local.yaml`` (benchmarks/bench_serve_autoscaling.py): the model
    replicas land on the nodes with the GPU stand-in; encoder load scales only the GeometryEncoder and
    LLM load only the LanguageModel, each back to one replica after. Minutes of load: full run only."""
    if not cluster_full:
        pytest.skip("the Serve autoscaling run takes ~10 minutes: make cluster-test (--cluster-full)")
    from benchmarks.bench_serve_autoscaling import benchmark, parse_args, plot, report

    opts = parse_args(["--out", str(tmp_path), "--phase-s", "240", "--cooldown-s", "120"])
    run, summary = benchmark(local_cluster, opts, tmp_path)
    report(summary)
    plot(run, tmp_path / "autoscaling.png")
    for phase, stressed in (("encoder", "GeometryEncoder"), ("llm", "LanguageModel")):
        s = summary[phase]
        other = next(d for d in DEPLOYMENTS if d != stressed)
        assert s["max_running"][stressed] == 2 and s["max_running"][other] == 1, s
        assert s["back_to_one_after_load_s"] is not None and s["failed"] == 0, s
        assert set(s["replica_nodes"]) <= set(WORKERS), s  # never on the head (it has no gpu_a10g)
