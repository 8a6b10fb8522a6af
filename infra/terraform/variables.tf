# Every setting of the stack. Only `endpoint_public_access_cidrs` has no default: say who may reach
# the Kubernetes API. See terraform.tfvars.example.

variable "name" {
  description = "Prefix of every resource (EKS cluster, VPC, bucket, roles). Lower-case letters, digits and '-'."
  type        = string
  default     = "vlm3r"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,18}[a-z0-9]$", var.name))
    error_message = "name must be 3-20 characters: lower-case letters, digits and '-', starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the cluster and the bucket (pick one that offers the GPU instance types you want)."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as us-east-1 or eu-west-2."
  }
}

variable "tags" {
  description = "Extra tags on every AWS resource (cost allocation, owner)."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR block of the VPC. Private subnets get /20s of it (4096 addresses each, pods use VPC IPs)."
  type        = string
  default     = "10.0.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 18
    error_message = "vpc_cidr must be a valid IPv4 CIDR block of /18 or larger."
  }
}

variable "availability_zone_count" {
  description = "Availability zones to spread subnets over (GPU capacity differs per zone: more zones, more chances)."
  type        = number
  default     = 3

  validation {
    condition     = var.availability_zone_count >= 2 && var.availability_zone_count <= 4
    error_message = "availability_zone_count must be between 2 and 4 (EKS needs at least 2)."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for the whole VPC (cheaper) instead of one per zone (survives a zone outage)."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------
# EKS
# ---------------------------------------------------------------------------------------------

variable "kubernetes_version" {
  description = "EKS Kubernetes version (major.minor)."
  type        = string
  default     = "1.34"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must look like 1.34."
  }
}

variable "endpoint_public_access_cidrs" {
  description = "CIDR blocks that may reach the public Kubernetes API endpoint (your office or VPN egress, e.g. [\"203.0.113.7/32\"])."
  type        = list(string)

  validation {
    condition     = length(var.endpoint_public_access_cidrs) > 0 && alltrue([for c in var.endpoint_public_access_cidrs : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "endpoint_public_access_cidrs must list valid CIDR blocks and must not open the API to 0.0.0.0/0."
  }
}

variable "system_node_group" {
  description = "CPU node group for the Ray head pods, the CPU Ray workers (video decoding, QA generation) and system pods."
  type = object({
    instance_types = list(string)
    min_size       = number
    max_size       = number
    desired_size   = number
    disk_size_gib  = optional(number, 200)
  })
  default = {
    instance_types = ["m6i.2xlarge"]
    min_size       = 1
    max_size       = 6
    desired_size   = 2
  }

  validation {
    condition = (
      var.system_node_group.min_size >= 1 &&
      var.system_node_group.min_size <= var.system_node_group.desired_size &&
      var.system_node_group.desired_size <= var.system_node_group.max_size
    )
    error_message = "system_node_group needs 1 <= min_size <= desired_size <= max_size (the Ray head lives there)."
  }
}

variable "gpu_node_groups" {
  description = <<-EOT
    GPU node groups, keyed by pool name. Each node is labelled `vlm3r.io/gpu-pool=<key>` and tainted
    `nvidia.com/gpu=true:NoSchedule`; the KubeRay manifests select a pool by that label
    (cluster/kuberay/raycluster-a10g.yaml -> "a10g", raycluster-1xh100.yaml -> "h100").
    min_size 0 lets the cluster autoscaler remove every GPU node when no Ray pod needs one.
    capacity_type SPOT is 60-70 % cheaper but nodes can be reclaimed (jobs resume from checkpoints).
    Give each pool one instance type (or types of equal size): the cluster autoscaler plans a
    scale-up from zero with the first type of the pool.
  EOT
  type = map(object({
    instance_types = list(string)
    min_size       = number
    max_size       = number
    desired_size   = number
    capacity_type  = optional(string, "ON_DEMAND")
    disk_size_gib  = optional(number, 300)
  }))
  default = {
    # g5.2xlarge: 1x NVIDIA A10G (24 GB), 8 vCPUs, 32 GiB: token precompute, evaluation, serving.
    a10g = {
      instance_types = ["g5.2xlarge"]
      min_size       = 0
      max_size       = 8
      desired_size   = 0
    }
    # p5.4xlarge: 1x NVIDIA H100 (80 GB), 16 vCPUs, 256 GiB: training. Alternatives (edit instance_types):
    # p4d.24xlarge (8x A100 40 GB), p5.48xlarge (8x H100), g6e.xlarge (1x L40S 48 GB).
    h100 = {
      instance_types = ["p5.4xlarge"]
      min_size       = 0
      max_size       = 4
      desired_size   = 0
    }
  }

  validation {
    condition = alltrue([
      for k, g in var.gpu_node_groups :
      can(regex("^[a-z0-9][a-z0-9-]{0,20}$", k)) &&
      length(g.instance_types) > 0 &&
      g.min_size >= 0 && g.min_size <= g.desired_size && g.desired_size <= g.max_size && g.max_size >= 1 &&
      contains(["ON_DEMAND", "SPOT"], g.capacity_type) &&
      g.disk_size_gib >= 100
    ])
    error_message = "each gpu_node_groups entry needs a lower-case key, instance types, 0 <= min_size <= desired_size <= max_size (max_size >= 1), capacity_type ON_DEMAND or SPOT, and disk_size_gib >= 100 (CUDA images are large)."
  }
}

# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------

variable "bucket_name" {
  description = "S3 bucket for scenes, QA data, token shards, checkpoints and models. Default: <name>-<account id>-<region> (globally unique)."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be a valid S3 bucket name (3-63 characters: lower-case letters, digits, '.', '-')."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days an overwritten or deleted object version is kept before S3 deletes it (versioning protects against accidents; this bounds its cost)."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && var.noncurrent_version_expiration_days <= 3650
    error_message = "noncurrent_version_expiration_days must be between 1 and 3650."
  }
}

variable "force_destroy_bucket" {
  description = "Let `terraform destroy` delete the bucket with everything in it. Leave false unless the data is disposable."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------------
# Kubernetes add-ons and the Ray workload identity
# ---------------------------------------------------------------------------------------------

variable "ray_namespace" {
  description = "Namespace of the RayClusters, RayJobs and RayServices (cluster/kuberay/*.yaml use \"vlm3r\")."
  type        = string
  default     = "vlm3r"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", var.ray_namespace))
    error_message = "ray_namespace must be a valid Kubernetes namespace name."
  }
}

variable "ray_service_account" {
  description = "Kubernetes service account of the Ray pods; its IAM role (IRSA) reads and writes the bucket (cluster/kuberay/*.yaml use \"vlm3r-ray\")."
  type        = string
  default     = "vlm3r-ray"

  validation {
    condition     = can(regex("^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$", var.ray_service_account))
    error_message = "ray_service_account must be a valid Kubernetes service account name."
  }
}

variable "kuberay_operator_version" {
  description = "Helm chart version of the KubeRay operator (>= 1.6 for RayCluster authOptions with secretName)."
  type        = string
  default     = "1.6.2"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.kuberay_operator_version))
    error_message = "kuberay_operator_version must be an exact chart version such as 1.6.2."
  }
}

variable "nvidia_device_plugin_version" {
  description = "Helm chart version of the NVIDIA device plugin (advertises nvidia.com/gpu on GPU nodes)."
  type        = string
  default     = "0.17.1"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.nvidia_device_plugin_version))
    error_message = "nvidia_device_plugin_version must be an exact chart version such as 0.17.1."
  }
}

variable "cluster_autoscaler_version" {
  description = "Helm chart version of the Kubernetes cluster autoscaler (adds and removes nodes for pending Ray pods)."
  type        = string
  default     = "9.53.0"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+$", var.cluster_autoscaler_version))
    error_message = "cluster_autoscaler_version must be an exact chart version such as 9.53.0."
  }
}
