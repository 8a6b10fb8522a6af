# IAM roles for service accounts (IRSA): pods get short-lived credentials from the EKS OIDC
# provider; no access key exists anywhere.

module "ray_irsa" {
  source  = "terraform-aws-modules/iam/aws//modules/iam-role-for-service-accounts"
  version = "6.5.0"
  #checkov:skip=CKV_TF_1:Registry module pinned to an exact version; registry sources cannot take a commit hash.

  name        = "${var.name}-ray"
  description = "Ray pods of ${var.name}: read and write the data bucket"

  oidc_providers = {
    this = {
      provider_arn               = module.eks.oidc_provider_arn
      namespace_service_accounts = ["${var.ray_namespace}:${var.ray_service_account}"]
    }
  }

  permissions = {
    ListBucket = {
      actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
      resources = [module.data_bucket.s3_bucket_arn]
    }
    ReadWriteObjects = {
      actions = [
        "s3:GetObject", "s3:PutObject", "s3:DeleteObject",
        "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
      ]
      resources = ["${module.data_bucket.s3_bucket_arn}/*"]
    }
    UseBucketKey = {
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = [aws_kms_key.data.arn]
    }
  }
}

module "cluster_autoscaler_irsa" {
  source  = "terraform-aws-modules/iam/aws//modules/iam-role-for-service-accounts"
  version = "6.5.0"
  #checkov:skip=CKV_TF_1:Registry module pinned to an exact version; registry sources cannot take a commit hash.

  name                             = "${var.name}-cluster-autoscaler"
  attach_cluster_autoscaler_policy = true
  cluster_autoscaler_cluster_names = [module.eks.cluster_name]

  oidc_providers = {
    this = {
      provider_arn               = module.eks.oidc_provider_arn
      namespace_service_accounts = ["kube-system:cluster-autoscaler"]
    }
  }
}
