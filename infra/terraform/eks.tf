# EKS with one CPU node group (Ray heads, CPU Ray workers, system pods) and one node group per entry
# of var.gpu_node_groups. GPU nodes carry the taint nvidia.com/gpu=true:NoSchedule, so only pods
# that tolerate it (the Ray GPU workers, the NVIDIA device plugin) land there, and the labels the
# KubeRay manifests select on.

locals {
  gpu_taint = {
    key    = "nvidia.com/gpu"
    value  = "true"
    effect = "NO_SCHEDULE" # the EKS API's name for Kubernetes' NoSchedule
  }

  system_node_group = {
    system = {
      ami_type       = "AL2023_x86_64_STANDARD"
      instance_types = var.system_node_group.instance_types
      capacity_type  = "ON_DEMAND" # the Ray head must not be reclaimed
      min_size       = var.system_node_group.min_size
      max_size       = var.system_node_group.max_size
      desired_size   = var.system_node_group.desired_size
      labels         = { "vlm3r.io/node-role" = "system" }
      block_device_mappings = {
        root = {
          device_name = "/dev/xvda"
          ebs         = { volume_size = var.system_node_group.disk_size_gib, volume_type = "gp3", encrypted = true, delete_on_termination = true }
        }
      }
    }
  }

  gpu_node_groups = {
    for pool, g in var.gpu_node_groups : "gpu-${pool}" => {
      ami_type       = "AL2023_x86_64_NVIDIA" # NVIDIA driver and container toolkit preinstalled
      instance_types = g.instance_types
      capacity_type  = g.capacity_type
      min_size       = g.min_size
      max_size       = g.max_size
      desired_size   = g.desired_size
      labels = {
        "vlm3r.io/node-role"     = "gpu"
        "vlm3r.io/gpu-pool"      = pool
        "nvidia.com/gpu.present" = "true"
      }
      taints = { gpu = local.gpu_taint }
      block_device_mappings = {
        root = {
          device_name = "/dev/xvda"
          ebs         = { volume_size = g.disk_size_gib, volume_type = "gp3", encrypted = true, delete_on_termination = true }
        }
      }
    }
  }
}

module "eks" {
  source  = "terraform-aws-modules/eks/aws"
  version = "21.19.0"
  #checkov:skip=CKV_TF_1:Registry module pinned to an exact version; registry sources cannot take a commit hash.

  name               = var.name
  kubernetes_version = var.kubernetes_version

  endpoint_private_access      = true
  endpoint_public_access       = true
  endpoint_public_access_cidrs = var.endpoint_public_access_cidrs

  # The identity that runs `terraform apply` becomes cluster admin (an EKS access entry, no aws-auth edits).
  enable_cluster_creator_admin_permissions = true
  enable_irsa                              = true
  enabled_log_types                        = ["api", "audit", "authenticator"]

  addons = {
    coredns    = {}
    kube-proxy = {}
    vpc-cni    = { before_compute = true }
  }

  vpc_id     = module.vpc.vpc_id
  subnet_ids = module.vpc.private_subnets

  eks_managed_node_groups = merge(local.system_node_group, local.gpu_node_groups)
}
