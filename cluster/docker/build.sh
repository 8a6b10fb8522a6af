#!/usr/bin/env bash
# Builds the cluster image and pushes it to the ECR repository made by infra/terraform.
#
#   cluster/docker/build.sh [TAG]          # TAG defaults to the git commit, e.g. 3f2c1ab
#
# Prints the full image reference; export it as VLM3R_IMAGE before applying cluster/kuberay/*.yaml.
# Needs docker (with buildx), the AWS CLI and terraform outputs (run `terraform apply` first).
# Other registries: set VLM3R_REGISTRY_REPO=registry.example.com/team/vlm3r and skip the ECR login.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
tag="${1:-$(git -C "$root" rev-parse --short HEAD)}"

if [[ -n "${VLM3R_REGISTRY_REPO:-}" ]]; then
    repo="$VLM3R_REGISTRY_REPO"
else
    repo="$(terraform -chdir="$root/infra/terraform" output -raw image_repository_url)"
    region="$(terraform -chdir="$root/infra/terraform" output -raw region)"
    aws ecr get-login-password --region "$region" | docker login --username AWS --password-stdin "${repo%%/*}"
fi

image="$repo:$tag"
docker buildx build --platform linux/amd64 -f "$root/cluster/docker/Dockerfile" -t "$image" --push "$root"
echo "built and pushed $image"
echo "export VLM3R_IMAGE=$image"
