"""The Terraform of infra/terraform: parses, pins its versions, and keeps the promises the cluster
manifests and the README rely on (tainted and labelled GPU pools, a private encrypted versioned
bucket, IRSA instead of keys), and checkov's AWS checks pass with every skip justified.

Real `terraform validate`/`plan` need the providers from the registry, which this environment
cannot reach; what can be checked offline is checked here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[2]
TF_DIR = ROOT / "infra" / "terraform"
TF_FILES = sorted(TF_DIR.glob("*.tf"))
TFVARS_EXAMPLE = TF_DIR / "terraform.tfvars.example"
CHECKOV_FALLBACK = ROOT / ".venv-tools" / "bin" / "checkov"

EXACT_VERSION = re.compile(r"^\d+\.\d+\.\d+$")
PESSIMISTIC_VERSION = re.compile(r"^~> ?\d+\.\d+$")  # ~> 6.42: >= 6.42, < 7.0


def unquote(value):
    """python-hcl2 keeps string literals quoted ('"abc"'); expressions stay '${...}'."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def load_hcl(path: Path) -> dict:
    with open(path) as fh:
        return hcl2.load(fh)


@pytest.fixture(scope="module")
def tf() -> dict[str, list]:
    """Every top-level block of every .tf file, by block type (resource, module, variable, ...)."""
    blocks: dict[str, list] = {}
    for path in TF_FILES:
        for kind, items in load_hcl(path).items():
            if not kind.startswith("__"):
                blocks.setdefault(kind, []).extend(items)
    return blocks


def named(items: list[dict]) -> dict[str, dict]:
    """{name: body} for labelled blocks such as module "vpc" { ... } or variable "name" { ... }."""
    out = {}
    for item in items:
        for name, body in item.items():
            out[unquote(name)] = body
    return out


def resources(tf: dict, rtype: str) -> dict[str, dict]:
    out = {}
    for item in tf.get("resource", []):
        for kind, by_name in item.items():
            if unquote(kind) == rtype:
                out.update(named([by_name]))
    return out


def locals_(tf: dict) -> dict:
    merged = {}
    for item in tf.get("locals", []):
        merged.update({k: v for k, v in item.items() if not k.startswith("__")})
    return merged


@pytest.mark.parametrize("path", [*TF_FILES, TFVARS_EXAMPLE], ids=lambda p: p.name)
def test_every_file_parses(path):
    parsed = load_hcl(path)
    assert parsed, f"{path.name} is empty"


def test_provider_and_terraform_versions_are_pinned(tf):
    (settings,) = tf["terraform"]
    assert unquote(settings["required_version"]).startswith(">= 1."), "terraform.required_version missing"
    (providers,) = settings["required_providers"]
    providers = {k: v for k, v in providers.items() if not k.startswith("__")}
    assert {"aws", "helm", "kubernetes"} <= set(providers)
    for name, spec in providers.items():
        assert unquote(spec["source"]) == f"hashicorp/{name}"
        assert PESSIMISTIC_VERSION.match(unquote(spec["version"])), f"provider {name}: pin with '~> X.Y', got {spec['version']}"


def test_every_module_comes_from_the_registry_at_an_exact_version(tf):
    modules = named(tf["module"])
    assert set(modules) == {"vpc", "eks", "data_bucket", "ray_irsa", "cluster_autoscaler_irsa"}
    for name, body in modules.items():
        source, version = unquote(body["source"]), unquote(body.get("version", ""))
        assert source.startswith("terraform-aws-modules/"), f"module {name}: {source}"
        assert EXACT_VERSION.match(version), f"module {name} must pin an exact version, got {version!r}"
    assert unquote(modules["ray_irsa"]["source"]).endswith("//modules/iam-role-for-service-accounts")


def test_every_helm_chart_is_pinned_by_a_validated_variable(tf):
    releases = resources(tf, "helm_release")
    assert set(releases) == {"kuberay_operator", "nvidia_device_plugin", "cluster_autoscaler"}
    variables = named(tf["variable"])
    for name, body in releases.items():
        ref = re.fullmatch(r"\$\{var\.(\w+)\}", body["version"])
        assert ref, f"helm_release {name}: version must come from a variable, got {body['version']}"
        default = unquote(variables[ref.group(1)]["default"])
        assert EXACT_VERSION.match(default), f"{ref.group(1)} default {default!r} is not an exact chart version"
        assert "validation" in variables[ref.group(1)]
    assert unquote(releases["kuberay_operator"]["chart"]) == "kuberay-operator"
    assert unquote(releases["nvidia_device_plugin"]["chart"]) == "nvidia-device-plugin"


def test_variables_are_described_typed_and_validated(tf):
    variables = named(tf["variable"])
    unvalidated = []
    for name, body in variables.items():
        assert unquote(body.get("description", "")).strip(), f"variable {name} has no description"
        assert "type" in body, f"variable {name} has no type"
        if body["type"] not in ("bool", "${map(string)}") and "validation" not in body:
            unvalidated.append(name)
        for rule in body.get("validation", []):
            assert unquote(rule["error_message"]).strip(), f"variable {name}: validation without an error message"
    assert not unvalidated, f"variables without validation: {unvalidated}"
    required = sorted(name for name, body in variables.items() if "default" not in body)
    assert required == ["endpoint_public_access_cidrs"], f"only the API allow-list may lack a default, got {required}"


def test_example_tfvars_sets_only_declared_variables(tf):
    variables = named(tf["variable"])
    example = {k for k in load_hcl(TFVARS_EXAMPLE) if not k.startswith("__")}
    assert example <= set(variables), f"undeclared in variables.tf: {sorted(example - set(variables))}"
    assert "endpoint_public_access_cidrs" in example


def test_outputs_the_manifests_and_readme_use(tf):
    outputs = named(tf["output"])
    for name in ("region", "cluster_name", "kubeconfig_command", "bucket_name", "bucket_uri",
                 "image_repository_url", "ray_namespace", "ray_service_account", "ray_irsa_role_arn"):
        assert name in outputs, f"output {name} missing"
        assert unquote(outputs[name]["description"]).strip()
    assert unquote(outputs["kubeconfig_command"]["value"]).startswith("aws eks update-kubeconfig --region ${var.region}")
    assert outputs["ray_irsa_role_arn"]["value"] == "${module.ray_irsa.arn}"


def test_gpu_node_groups_are_tainted_and_labelled(tf):
    local = locals_(tf)
    taint = {k: unquote(v) for k, v in local["gpu_taint"].items() if not k.startswith("__")}
    assert taint == {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"}
    groups = local["gpu_node_groups"]  # a for-expression over var.gpu_node_groups, kept as text
    assert groups.startswith("${{for pool, g in var.gpu_node_groups :"), "every GPU pool must come from var.gpu_node_groups"
    for needle in ("taints = {gpu = local.gpu_taint}", '"vlm3r.io/gpu-pool" = pool', '"vlm3r.io/node-role" = "gpu"',
                   'ami_type = "AL2023_x86_64_NVIDIA"', "capacity_type = g.capacity_type",
                   "min_size = g.min_size", "max_size = g.max_size", "desired_size = g.desired_size"):
        assert needle in groups, f"GPU node groups lack {needle}"
    (system,) = local["system_node_group"].values()
    assert "taints" not in system, "the system pool must stay untainted: the Ray heads run there"
    assert system["labels"] == {'"vlm3r.io/node-role"': '"system"'}
    eks = named(tf["module"])["eks"]
    assert eks["eks_managed_node_groups"] == "${merge(local.system_node_group, local.gpu_node_groups)}"
    assert eks["endpoint_public_access_cidrs"] == "${var.endpoint_public_access_cidrs}"


def test_default_gpu_pools_scale_from_zero(tf):
    pools = named(tf["variable"])["gpu_node_groups"]["default"]
    assert {unquote(k) for k in pools} >= {"a10g", "h100"}
    for name, pool in pools.items():
        assert pool["min_size"] == 0 and pool["desired_size"] == 0, f"pool {name} should cost nothing when idle"
        assert pool["max_size"] >= 1


def test_device_plugin_runs_on_tainted_gpu_nodes(tf):
    values = resources(tf, "helm_release")["nvidia_device_plugin"]["values"][0]
    assert 'tolerations = [{key = "nvidia.com/gpu", operator = "Exists", effect = "NoSchedule"}]' in values
    assert 'nodeSelector = {"vlm3r.io/node-role" = "gpu"}' in values


def test_bucket_is_private_encrypted_versioned_with_lifecycle(tf):
    bucket = named(tf["module"])["data_bucket"]
    for flag in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets",
                 "attach_deny_insecure_transport_policy"):
        assert bucket[flag] is True, f"data bucket: {flag} must be true"
    assert unquote(bucket["object_ownership"]) == "BucketOwnerEnforced"  # no ACLs at all
    assert bucket["versioning"]["enabled"] is True
    sse = bucket["server_side_encryption_configuration"]["rule"]["apply_server_side_encryption_by_default"]
    assert unquote(sse["sse_algorithm"]) == "aws:kms" and sse["kms_master_key_id"] == "${aws_kms_key.data.arn}"
    rules = {unquote(r["id"]): r for r in bucket["lifecycle_rule"]}
    assert all(r["enabled"] is True for r in rules.values())
    assert any("abort_incomplete_multipart_upload_days" in r for r in rules.values())
    assert any("noncurrent_version_expiration" in r for r in rules.values())
    assert not resources(tf, "aws_s3_bucket_policy") and not resources(tf, "aws_s3_bucket_acl")
    assert resources(tf, "aws_kms_key")["data"]["enable_key_rotation"] is True
    registry = resources(tf, "aws_ecr_repository")["image"]
    assert unquote(registry["image_tag_mutability"]) == "IMMUTABLE"
    assert unquote(registry["encryption_configuration"][0]["encryption_type"]) == "KMS"


def test_ray_pods_get_bucket_access_through_irsa_only(tf):
    irsa = named(tf["module"])["ray_irsa"]
    (provider,) = irsa["oidc_providers"].values()
    assert provider["provider_arn"] == "${module.eks.oidc_provider_arn}"
    assert [unquote(a) for a in provider["namespace_service_accounts"]] == ["${var.ray_namespace}:${var.ray_service_account}"]
    for sid, statement in irsa["permissions"].items():
        for resource in statement["resources"]:
            assert resource != '"*"', f"{sid}: the Ray role must not act on every resource"
            assert "module.data_bucket.s3_bucket_arn" in resource or resource == "${aws_kms_key.data.arn}", resource
    account = resources(tf, "kubernetes_service_account_v1")["ray"]
    annotations = account["metadata"][0]["annotations"]
    assert annotations == {'"eks.amazonaws.com/role-arn"': "${module.ray_irsa.arn}"}


# Access key ids (AKIA/ASIA + 16), 40-character secrets after a secret-ish name, private keys, and the
# attribute names that carry static credentials in provider blocks.
SECRET_PATTERNS = [
    re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    re.compile(r"(?i)(secret|password|token)[\w-]*\s*[=:]\s*[\"']?[A-Za-z0-9/+=]{32,}"),
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"(?im)^\s*(access_key|secret_key|aws_secret_access_key|aws_access_key_id)\s*="),
]


def test_no_static_credentials_anywhere(tf):
    scanned = [p for d in (TF_DIR, ROOT / "cluster") for p in sorted(d.rglob("*")) if p.is_file()]
    assert len(scanned) >= len(TF_FILES) + 5
    for path in scanned:
        text = path.read_text()
        for pattern in SECRET_PATTERNS:
            match = pattern.search(text)
            assert not match, f"{path.relative_to(ROOT)}: looks like a static credential: {match.group(0)[:40]!r}"
    for kind in ("aws_iam_access_key", "aws_iam_user", "aws_iam_user_login_profile"):
        assert not resources(tf, kind), f"{kind}: use IAM roles (IRSA), not users with keys"
    aws = named(tf["provider"])["aws"]
    assert not {"access_key", "secret_key", "token", "profile", "shared_credentials_files"} & set(aws)


def find_checkov() -> str:
    found = shutil.which("checkov") or (str(CHECKOV_FALLBACK) if CHECKOV_FALLBACK.exists() else None)
    if found is None:
        pytest.fail(f"checkov not found on PATH nor at {CHECKOV_FALLBACK}: run `make install` (it creates .venv-tools with checkov)")
    return found


def test_checkov_terraform_checks_pass_and_skips_are_justified():
    run = subprocess.run(
        [find_checkov(), "-d", str(TF_DIR), "--framework", "terraform", "--compact", "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=180,
    )
    report = json.loads(run.stdout)
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in report["results"]["failed_checks"]]
    assert run.returncode == 0 and not failed, f"checkov failures: {failed}\n{run.stderr[-2000:]}"
    assert report["summary"]["passed"] >= 10, report["summary"]  # it really scanned our resources

    justified = {}
    for path in TF_FILES:
        for check, reason in re.findall(r"#checkov:skip=(CKV\w+):(.*)", path.read_text()):
            assert len(reason.strip()) >= 20, f"{path.name}: skip of {check} needs a real reason, got {reason!r}"
            justified.setdefault(check, reason)
    skipped = {c["check_id"] for c in report["results"]["skipped_checks"]}
    assert skipped == set(justified), f"skipped {sorted(skipped)} vs justified in comments {sorted(justified)}"
