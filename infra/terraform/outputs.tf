# What cluster/kuberay/*.yaml and the README use: `terraform output -raw <name>`.

output "region" {
  description = "AWS region of the stack."
  value       = var.region
}

output "cluster_name" {
  description = "EKS cluster name."
  value       = module.eks.cluster_name
}

output "kubeconfig_command" {
  description = "Adds the cluster to ~/.kube/config."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${module.eks.cluster_name}"
}

output "bucket_name" {
  description = "Data bucket: export VLM3R_BUCKET=$(terraform output -raw bucket_name) before applying the KubeRay manifests."
  value       = module.data_bucket.s3_bucket_id
}

output "bucket_uri" {
  description = "Root URI of the project data."
  value       = "s3://${module.data_bucket.s3_bucket_id}"
}

output "image_repository_url" {
  description = "ECR repository of the cluster image (cluster/docker/build.sh pushes here)."
  value       = aws_ecr_repository.image.repository_url
}

output "ray_namespace" {
  description = "Namespace of the Ray resources."
  value       = kubernetes_namespace_v1.ray.metadata[0].name
}

output "ray_service_account" {
  description = "Service account of the Ray pods (serviceAccountName in the KubeRay manifests)."
  value       = kubernetes_service_account_v1.ray.metadata[0].name
}

output "ray_irsa_role_arn" {
  description = "IAM role the Ray service account assumes (IRSA): bucket read/write, nothing else."
  value       = module.ray_irsa.arn
}

output "gpu_node_pools" {
  description = "GPU pools by name: select one with nodeSelector vlm3r.io/gpu-pool=<name>."
  value       = { for pool, g in var.gpu_node_groups : pool => g.instance_types }
}
