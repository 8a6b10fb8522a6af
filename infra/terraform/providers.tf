# Credentials come from the caller's AWS environment (profile, SSO or an assumed role), never from
# this code. Kubernetes and Helm talk to the new cluster with a short-lived token from
# `aws eks get-token`, so no kubeconfig or static token is written anywhere.

provider "aws" {
  region = var.region

  default_tags {
    tags = merge({ Project = var.name, ManagedBy = "terraform" }, var.tags)
  }
}

locals {
  eks_exec_auth = {
    api_version = "client.authentication.k8s.io/v1beta1"
    command     = "aws"
    args        = ["eks", "get-token", "--cluster-name", module.eks.cluster_name, "--region", var.region]
  }
}

provider "kubernetes" {
  host                   = module.eks.cluster_endpoint
  cluster_ca_certificate = base64decode(module.eks.cluster_certificate_authority_data)

  exec {
    api_version = local.eks_exec_auth.api_version
    command     = local.eks_exec_auth.command
    args        = local.eks_exec_auth.args
  }
}

provider "helm" {
  kubernetes = {
    host                   = module.eks.cluster_endpoint
    cluster_ca_certificate = base64decode(module.eks.cluster_certificate_authority_data)
    exec                   = local.eks_exec_auth
  }
}
