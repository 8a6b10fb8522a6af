"""The cluster definitions under cluster/: KubeRay manifests, the `ray up` config and the image.

What is checked is what KubeRay, Ray or Kubernetes would reject or silently get wrong: the CRD fields
KubeRay requires, GPU requests and tolerations that match the Terraform node pools, entrypoints
that name real jobs with flags their parsers accept, RayJobs whose outputs are the next job's
inputs, a RayService config that matches a fresh `serve build` of the app, a launcher config Ray's
own schema accepts, and checkov's Kubernetes checks on every Ray pod template.
"""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import hcl2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERAY = ROOT / "cluster" / "kuberay"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
RAY_UP = ROOT / "cluster" / "aws" / "ray-cluster-gpu.yaml"
DOCKERFILE = ROOT / "cluster" / "docker" / "Dockerfile"
BUILD_SH = ROOT / "cluster" / "docker" / "build.sh"
CHECKOV_FALLBACK = ROOT / ".venv-tools" / "bin" / "checkov"

# envsubst fills these at apply time (README: "Running on a cluster"); nothing else is templated.
PLACEHOLDERS = {"VLM3R_IMAGE": "123456789012.dkr.ecr.us-east-1.amazonaws.com/vlm3r:abc1234",
                "VLM3R_BUCKET": "example-bucket"}
KIND_PREFIX = {"RayCluster": "raycluster-", "RayJob": "rayjob-", "RayService": "rayservice-"}
# Allocatable share of each node type the pools use (vCPUs, GiB), minus room for system pods.
INSTANCE_SIZE = {"m6i.2xlarge": (8, 32), "g5.2xlarge": (8, 32), "p5.4xlarge": (16, 256)}
# What the RayService may set beyond `serve build`'s output: the GPU settings of serve_apps.
SERVE_GPU_OVERRIDES = {
    "deployment": {"graceful_shutdown_timeout_s"},
    "autoscaling_config": {"upscale_delay_s", "downscale_delay_s"},
    "ray_actor_options": {"num_gpus"},
}
# `serve build serve_apps:vlm3r` names the no-argument app (the tiny preset); the manifest names its
# builder with `args` for the trained model. Both are the same application graph.
SERVE_IMPORT_PATHS = {"serve_apps:vlm3r": "serve_apps.app:build_app"}


def load(path: Path) -> dict:
    (doc,) = list(yaml.safe_load_all(path.read_text()))
    return doc


def substitute(text: str) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: PLACEHOLDERS[m.group(1)], text)


def ray_cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[doc["kind"]]()


def pod_templates(spec: dict) -> list[tuple[str, dict]]:
    return [("head", spec["headGroupSpec"]["template"])] + [(g["groupName"], g["template"]) for g in spec["workerGroupSpecs"]]


def terraform_defaults() -> dict:
    with open(ROOT / "infra" / "terraform" / "variables.tf") as fh:
        variables = {}
        for item in hcl2.load(fh)["variable"]:
            for name, body in item.items():
                variables[name.strip('"')] = body.get("default")
    unquote = lambda v: v.strip('"') if isinstance(v, str) else v  # noqa: E731
    return {
        "namespace": unquote(variables["ray_namespace"]),
        "service_account": unquote(variables["ray_service_account"]),
        "system_types": [unquote(t) for t in variables["system_node_group"]["instance_types"]],
        "gpu_pools": {k.strip('"'): [unquote(t) for t in v["instance_types"]] for k, v in variables["gpu_node_groups"].items()},
    }


@pytest.fixture(scope="module")
def tf_defaults() -> dict:
    return terraform_defaults()


def checkov_path() -> str | None:
    return shutil.which("checkov") or (str(CHECKOV_FALLBACK) if CHECKOV_FALLBACK.exists() else None)


def find_checkov() -> str:
    found = checkov_path()
    if found is None:
        pytest.fail(f"checkov not found on PATH nor at {CHECKOV_FALLBACK}: run `make install` (it creates .venv-tools with checkov)")
    return found


@pytest.fixture(scope="module", autouse=True)
def background(tmp_path_factory):
    """The slow external tools, started together when the module's first test runs: `serve build`
    of the app and checkov on the manifests and on their pod templates. Tests wait on them last."""
    tmp = tmp_path_factory.mktemp("cluster")
    pods = tmp / "pods"
    pods.mkdir()
    # checkov has no KubeRay policies (it skips the CRDs), so every Ray pod template is also
    # written out as a plain Pod, annotations included, for its Kubernetes checks.
    for path in MANIFESTS:
        doc = load(path)
        docs = [{"apiVersion": "v1", "kind": "Pod",
                 "metadata": {"name": f"{doc['metadata']['name']}-{group}", "namespace": doc["metadata"]["namespace"],
                              "annotations": template.get("metadata", {}).get("annotations", {})},
                 "spec": template["spec"]}
                for group, template in pod_templates(ray_cluster_spec(doc))]
        (pods / path.name).write_text(yaml.safe_dump_all(docs))
    serve = Path(sys.executable).with_name("serve")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    procs = {
        "serve_build": subprocess.Popen([str(serve), "build", "serve_apps:vlm3r", "-o", str(tmp / "serve_config.yaml")],
                                        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    }
    if (checkov := checkov_path()) is not None:  # absent: the checkov test fails and says why
        procs["checkov_pods"] = subprocess.Popen(
            [checkov, "-d", str(pods), "--framework", "kubernetes", "--compact", "--skip-download", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs["checkov_crds"] = subprocess.Popen(
            [checkov, "-d", str(KUBERAY), "--framework", "kubernetes", "--compact", "--quiet", "--skip-download"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield {"dir": tmp, "procs": procs, "pods": pods}
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def finish(background, name: str, timeout: float = 150) -> tuple[int, str, str]:
    proc = background["procs"][name]
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{name} did not finish within {timeout} s")
    return proc.returncode, out or "", err or ""


# ------------------------------------------------------------------------------------------------
# KubeRay resources
# ------------------------------------------------------------------------------------------------


def test_expected_manifests_exist():
    kinds = {path.name: load(path)["kind"] for path in MANIFESTS}
    assert {"raycluster-a10g.yaml", "raycluster-1xh100.yaml", "rayservice-vlm3r-a10g.yaml"} <= set(kinds)
    entry_jobs = {re.search(r"python (jobs/\w+\.py)", load(KUBERAY / n)["spec"]["entrypoint"]).group(1)
                  for n, kind in kinds.items() if kind == "RayJob"}
    assert {"jobs/generate_qa.py", "jobs/precompute_tokens.py", "jobs/train.py"} <= entry_jobs


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_a_ray_io_v1_resource_in_the_terraform_namespace(path, tf_defaults):
    text = path.read_text()
    assert set(re.findall(r"\$\{(\w+)\}", text)) <= set(PLACEHOLDERS), "unknown ${...} placeholder"
    doc = yaml.safe_load(substitute(text))
    assert doc["apiVersion"] == "ray.io/v1"
    assert path.name.startswith(KIND_PREFIX[doc["kind"]]), f"{doc['kind']} in a file not named {KIND_PREFIX[doc['kind']]}*"
    assert doc["metadata"]["namespace"] == tf_defaults["namespace"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_ray_cluster_spec_has_what_kuberay_requires(path):
    spec = ray_cluster_spec(load(path))
    assert spec["rayVersion"] == importlib.metadata.version("ray"), "rayVersion must match the Ray in the image"
    assert spec["authOptions"] == {"mode": "token", "secretName": "vlm3r-ray-auth"}, "token auth with the shared Secret"
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["rayStartParams"]["num-cpus"] == "0"
    assert head["template"]["spec"]["containers"][0]["name"] == "ray-head"
    groups = spec["workerGroupSpecs"]
    assert groups and len({g["groupName"] for g in groups}) == len(groups)
    for group in groups:
        assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(group), group.get("groupName")
        assert isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group.get("replicas", group["minReplicas"]) <= group["maxReplicas"], group["groupName"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_pods_run_the_project_image_with_the_irsa_service_account(path, tf_defaults):
    for group, template in pod_templates(ray_cluster_spec(load(path))):
        pod = template["spec"]
        assert pod["serviceAccountName"] == tf_defaults["service_account"], f"{group}: no bucket access without IRSA"
        (container,) = pod["containers"]
        assert container["image"] == "${VLM3R_IMAGE}", f"{group}: every pod runs the image of cluster/docker"
        resources = container["resources"]
        assert resources["limits"] == resources["requests"], f"{group}: Ray sizes itself from limits; keep requests equal"
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        if group != "head":
            assert pod["automountServiceAccountToken"] is False, f"{group}: workers do not call the Kubernetes API"
            assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]


def gib(quantity: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Gi|Mi)", quantity).groups()
    return float(number) / (1024 if unit == "Mi" else 1)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_gpu_workers_request_gpus_on_a_terraform_pool_and_tolerate_its_taint(path, tf_defaults):
    pools = tf_defaults["gpu_pools"]
    gpu_pools_used = set()
    for group, template in pod_templates(ray_cluster_spec(load(path))):
        pod = template["spec"]
        limits = pod["containers"][0]["resources"]["limits"]
        tolerations = pod.get("tolerations", [])
        if "nvidia.com/gpu" in limits:
            pool = pod["nodeSelector"]["vlm3r.io/gpu-pool"]
            assert pool in pools, f"{group}: pool {pool!r} is not in infra/terraform gpu_node_groups {sorted(pools)}"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in tolerations, \
                f"{group}: GPU pods must tolerate the nvidia.com/gpu:NoSchedule taint of the GPU nodes"
            assert int(limits["nvidia.com/gpu"]) >= 1
            instance = pools[pool][0]
            gpu_pools_used.add(pool)
        else:
            assert pod["nodeSelector"] == {"vlm3r.io/node-role": "system"}, f"{group}: CPU pods go to the system pool"
            assert not tolerations, f"{group}: CPU pods must not take GPU nodes"
            instance = tf_defaults["system_types"][0]
        vcpus, memory = INSTANCE_SIZE[instance]
        assert float(limits["cpu"]) <= vcpus - 1 and gib(limits["memory"]) <= memory * 0.85, f"{group} does not fit a {instance}"
    hardware = {"a10g": "a10g", "1xh100": "h100", "cpu": None}
    (named,) = [h for h in hardware if f"-{h}." in path.name]
    assert gpu_pools_used == ({hardware[named]} if hardware[named] else set()), f"{path.name} names its hardware"


# ------------------------------------------------------------------------------------------------
# RayJobs: entrypoints, flags, and the data flow between them
# ------------------------------------------------------------------------------------------------


def entrypoint_commands(doc: dict) -> list[list[str]]:
    """Each `python jobs/X.py ...` command of a RayJob entrypoint, placeholders filled."""
    words = shlex.split(substitute(doc["spec"]["entrypoint"]))
    commands, current = [], []
    for word in [*words, "&&"]:
        if word in ("&&", ";"):
            commands.append(current)
            current = []
        else:
            current.append(word)
    return [c for c in commands if c]


def job_configs() -> dict[str, tuple]:
    """{job script: (its config, its RayOptions)} for every RayJob, through the job's own CLI layer
    (``--gpu`` and ``--address`` are Ray options shared by every job, not fields of its config)."""
    from vlm3r_core.cli import parse

    configs = {}
    for path in MANIFESTS:
        doc = load(path)
        if doc["kind"] != "RayJob":
            continue
        for command in entrypoint_commands(doc):
            assert command[0] == "python" and re.fullmatch(r"jobs/\w+\.py", command[1]), f"{path.name}: {command[:2]}"
            assert (ROOT / command[1]).is_file(), f"{path.name}: {command[1]} does not exist"
            module = importlib.import_module(command[1][:-3].replace("/", "."))
            try:
                configs[command[1]] = (module.parse_args(command[2:]), parse(command[2:], *module.CONFIGS)[1])
            except SystemExit as exc:  # argparse printed why on stderr
                pytest.fail(f"{path.name}: {command[1]} rejects the entrypoint's flags (argparse exit {exc.code})")
    return configs


@pytest.fixture(scope="module")
def job_options() -> dict[str, tuple]:
    return job_configs()


@pytest.fixture(scope="module")
def jobs(job_options) -> dict[str, object]:
    return {name: cfg for name, (cfg, _) in job_options.items()}


def test_rayjob_entrypoints_parse_with_the_jobs_own_parsers(jobs):
    assert set(jobs) >= {"jobs/generate_qa.py", "jobs/precompute_tokens.py", "jobs/train.py", "jobs/evaluate.py"}


def test_rayjobs_read_and_write_the_bucket_only(jobs):
    bucket = f"s3://{PLACEHOLDERS['VLM3R_BUCKET']}/"
    for path in MANIFESTS:
        doc = load(path)
        if doc["kind"] != "RayJob":
            continue
        for command in entrypoint_commands(doc):
            uris = [w for w in command if "://" in w or w.startswith(("/", "./"))]
            assert uris and all(u.startswith(bucket) for u in uris), f"{path.name}: every location is in the bucket: {uris}"


def test_each_rayjob_reads_what_the_previous_one_wrote(jobs, job_options):
    from datagen.dataset import split_uri
    from vlm3r_core.precompute import encoder_info, model_config
    from vlm3r_core.tokens import token_dir

    qa, pre, train, evaluate = (jobs[f"jobs/{n}.py"] for n in ("generate_qa", "precompute_tokens", "train", "evaluate"))
    assert pre.scenes == qa.scenes, "tokens are computed for the scenes the QA was generated from"
    # generate_qa writes the shards of each split under <out>/qa/conversations/<split>/ and <out>/qa/benchmark/<split>/
    assert train.qa_uri == split_uri(qa.out, "conversations", "train")
    assert evaluate.benchmark == split_uri(qa.out, "benchmark", "val")
    tokens = token_dir(pre.out, encoder_info(model_config(pre.preset, pre.checkpoint, pre.size, pre.num_frames),
                                             pre.with_vision_features, pre.dtype))
    assert train.tokens_uri == tokens and evaluate.tokens == tokens, f"precompute writes {tokens}"
    assert train.preset == pre.preset
    # The GPU jobs require GPUs (--gpu: a missing GPU pool is an error, not a silent CPU run).
    assert job_options["jobs/train.py"][1].gpu == "on" and job_options["jobs/evaluate.py"][1].gpu == "on"
    assert evaluate.model == train.model_uri
    serve_args = yaml.safe_load(substitute(load(KUBERAY / "rayservice-vlm3r-a10g.yaml")["spec"]["serveConfigV2"]))
    assert serve_args["applications"][0]["args"]["model"] == train.model_uri, "the RayService serves the trained model"


@pytest.mark.parametrize("path", [p for p in MANIFESTS if p.name.startswith("rayjob-")], ids=lambda p: p.name)
def test_rayjob_runs_from_the_image_and_cleans_up(path):
    spec = load(path)["spec"]
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"working_dir": dockerfile_workdir()}
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0


def test_training_workers_fit_the_gpu_pods(jobs):
    train = jobs["jobs/train.py"]
    spec = ray_cluster_spec(load(KUBERAY / "rayjob-train-1xh100.yaml"))
    (gpu_group,) = [g for g in spec["workerGroupSpecs"] if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    limits = gpu_group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert train.num_workers <= gpu_group["maxReplicas"] * int(limits["nvidia.com/gpu"])
    assert train.cpus_per_worker <= float(limits["cpu"])


# ------------------------------------------------------------------------------------------------
# The container image and the `ray up` config
# ------------------------------------------------------------------------------------------------


def pyproject_torch_pin() -> str:
    return re.search(r'"(torch==[^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)


def pyproject_packages() -> list[str]:
    include = re.search(r"^include = \[(.*)\]", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    return [p.strip(' "*') for p in include.split(",")]


def dockerfile_workdir() -> str:
    return re.findall(r"^WORKDIR (\S+)", DOCKERFILE.read_text(), re.M)[-1]


def test_dockerfile_installs_cuda_torch_and_the_project():
    text = DOCKERFILE.read_text()
    ray_version = importlib.metadata.version("ray")
    base = re.search(r"^ARG RAY_IMAGE=(\S+)", text, re.M).group(1)
    assert re.fullmatch(rf"rayproject/ray:{re.escape(ray_version)}-py311-(gpu|cu\d+)", base), base
    assert f"ARG TORCH_VERSION={pyproject_torch_pin().split('==')[1]}" in text
    assert re.search(r"--index-url \"\$\{TORCH_INDEX_URL\}\"", text) and "download.pytorch.org/whl/cu" in text
    packages = pyproject_packages()
    assert {"vlm3r_core", "datagen", "jobs", "serve_apps"} <= set(packages)
    for package in packages:
        assert re.search(rf"^COPY .*\b{package} \./{package}$", text, re.M), f"the image lacks {package}/"
    assert "pip install --no-cache-dir ." in text
    run = subprocess.run(["bash", "-n", str(BUILD_SH)], capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert os.access(BUILD_SH, os.X_OK)


def test_ray_up_config_passes_rays_schema():
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    raw = yaml.safe_load(RAY_UP.read_text())
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)  # Ray's JSON schema plus its min/max worker checks
    types = config["available_node_types"]
    instance = {name: t["node_config"]["InstanceType"] for name, t in types.items()}
    assert instance[config["head_node_type"]].startswith("m")
    assert any(i.startswith(("g5", "g6")) for i in instance.values()), "no GPU worker type"
    assert sum(t.get("max_workers", 0) for t in types.values()) >= config["max_workers"] > 0
    assert config["docker"]["image"] == f"rayproject/ray:{importlib.metadata.version('ray')}-py311-gpu"
    project_dir = next(remote for remote, local in raw["file_mounts"].items() if local == ".")
    setup = " ; ".join(config["setup_commands"])
    assert f"pip install -q -e {project_dir}" in setup
    assert pyproject_torch_pin() in setup
    assert raw["file_mounts"].get("/home/ray/.ray/auth_token") == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert any("RAY_AUTH_MODE=token" in c and "ray start" in c for c in config[key]), f"{key}: token auth off"
    assert {".venv", ".git"} <= set(raw["rsync_exclude"])


# ------------------------------------------------------------------------------------------------
# The RayService against `serve build`, and checkov (these wait on the background tools)
# ------------------------------------------------------------------------------------------------


def test_rayservice_args_are_valid_app_args():
    from serve_apps.args import Vlm3rArgs

    (app,) = yaml.safe_load(substitute(load(KUBERAY / "rayservice-vlm3r-a10g.yaml")["spec"]["serveConfigV2"]))["applications"]
    Vlm3rArgs(**app["args"])  # pydantic raises on an unknown or invalid field


def test_rayservice_serve_config_matches_serve_build(background):
    from ray.serve.schema import ServeDeploySchema

    code, out, _ = finish(background, "serve_build")
    assert code == 0, f"serve build failed:\n{out[-3000:]}"
    built = yaml.safe_load((background["dir"] / "serve_config.yaml").read_text())
    manifest = yaml.safe_load(substitute(load(KUBERAY / "rayservice-vlm3r-a10g.yaml")["spec"]["serveConfigV2"]))
    ServeDeploySchema.model_validate(manifest)  # what the Serve controller will parse
    assert set(manifest) == set(built)
    (built_app,), (app,) = built["applications"], manifest["applications"]
    assert app["import_path"] in (built_app["import_path"], SERVE_IMPORT_PATHS.get(built_app["import_path"]))
    assert app["route_prefix"] == built_app["route_prefix"]
    built_deployments = {d["name"]: d for d in built_app["deployments"]}
    deployments = {d["name"]: d for d in app["deployments"]}
    assert set(deployments) == set(built_deployments), "deployment names differ from the app's"
    for name, built_d in built_deployments.items():
        d = deployments[name]
        assert set(built_d) <= set(d), f"{name}: keys missing: {set(built_d) - set(d)}"
        assert set(d) - set(built_d) <= SERVE_GPU_OVERRIDES["deployment"], f"{name}: undocumented keys {set(d) - set(built_d)}"
        for section in ("autoscaling_config", "ray_actor_options"):
            extra = set(d[section]) - set(built_d[section])
            assert set(built_d[section]) <= set(d[section]) and extra <= SERVE_GPU_OVERRIDES[section], f"{name}.{section}: {extra}"
    gpu = {name for name, d in deployments.items() if d["ray_actor_options"].get("num_gpus")}
    assert gpu == {"GeometryEncoder", "LanguageModel"}, "the two model deployments take a GPU each"


def test_rayservice_gpu_replicas_fit_its_gpu_pods():
    doc = load(KUBERAY / "rayservice-vlm3r-a10g.yaml")
    (app,) = yaml.safe_load(substitute(doc["spec"]["serveConfigV2"]))["applications"]
    groups = ray_cluster_spec(doc)["workerGroupSpecs"]
    (gpu_limits,) = [g["template"]["spec"]["containers"][0]["resources"]["limits"] for g in groups
                     if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
    for d in app["deployments"]:
        options = d["ray_actor_options"]
        if options.get("num_gpus"):
            assert options["num_gpus"] <= int(gpu_limits["nvidia.com/gpu"]) and options["num_cpus"] <= float(gpu_limits["cpu"]), d["name"]


def test_checkov_kubernetes_checks_pass_and_skips_are_justified(background):
    find_checkov()
    code, out, err = finish(background, "checkov_crds")
    assert code == 0, f"checkov on cluster/kuberay failed:\n{out[-3000:]}{err[-2000:]}"
    code, out, err = finish(background, "checkov_pods")
    report = json.loads(out)
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in report["results"]["failed_checks"]]
    assert code == 0 and not failed, f"checkov failures on the Ray pod templates: {failed}\n{err[-2000:]}"
    assert report["summary"]["passed"] >= 100, report["summary"]  # it really scanned the pods
    for path in MANIFESTS:
        for check, reason in re.findall(r"checkov\.io/skip\d+: (CKV\w+)=(.*)", path.read_text()):
            assert len(reason.strip()) >= 20, f"{path.name}: skip of {check} needs a real reason, got {reason!r}"
