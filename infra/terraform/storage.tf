# The one bucket of the project (scenes, QA, token shards, checkpoints, models) and the container
# registry for the cluster image. Both are private and encrypted with a customer-managed KMS key.

data "aws_caller_identity" "current" {}

locals {
  bucket_name = coalesce(var.bucket_name, "${var.name}-${data.aws_caller_identity.current.account_id}-${var.region}")
}

resource "aws_kms_key" "data" {
  description             = "${var.name}: bucket objects and container images"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "data" {
  name          = "alias/${var.name}-data"
  target_key_id = aws_kms_key.data.key_id
}

# Key policy: the account administers the key through IAM (the default policy, written out so
# checkov can read it); who may use it is decided by IAM policies such as the Ray role's.
data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_111:Key policy: Resource "*" means this key only, and the principal is the account, which delegates to IAM (the AWS default key policy).
  #checkov:skip=CKV_AWS_356:Key policy: Resource "*" means this key only (KMS key policies cannot name the key they belong to).
  #checkov:skip=CKV_AWS_109:Key policy: permission management is delegated to the account's IAM, as in the AWS default key policy; without it the key becomes unmanageable.
  statement {
    sid       = "AccountAdministersKeyThroughIAM"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:aws:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
}

module "data_bucket" {
  source  = "terraform-aws-modules/s3-bucket/aws"
  version = "5.15.4"
  #checkov:skip=CKV_TF_1:Registry module pinned to an exact version; registry sources cannot take a commit hash.

  bucket        = local.bucket_name
  force_destroy = var.force_destroy_bucket

  # Private: no ACLs, no public policies, TLS only.
  block_public_acls                     = true
  block_public_policy                   = true
  ignore_public_acls                    = true
  restrict_public_buckets               = true
  control_object_ownership              = true
  object_ownership                      = "BucketOwnerEnforced"
  attach_deny_insecure_transport_policy = true
  attach_require_latest_tls_policy      = true

  versioning = { enabled = true }

  server_side_encryption_configuration = {
    rule = {
      apply_server_side_encryption_by_default = {
        sse_algorithm     = "aws:kms"
        kms_master_key_id = aws_kms_key.data.arn
      }
      bucket_key_enabled = true # one KMS call per object prefix, not per request: token shards are many small reads
    }
  }

  lifecycle_rule = [
    {
      id                                     = "abort-incomplete-multipart-uploads"
      enabled                                = true
      abort_incomplete_multipart_upload_days = 7
      filter                                 = {}
    },
    {
      id                            = "expire-noncurrent-versions"
      enabled                       = true
      noncurrent_version_expiration = { days = var.noncurrent_version_expiration_days }
      filter                        = {}
    },
  ]
}

resource "aws_ecr_repository" "image" {
  name                 = var.name
  image_tag_mutability = "IMMUTABLE" # a tag always names the same image: clusters are reproducible
  force_delete         = false

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.data.arn
  }
}

resource "aws_ecr_lifecycle_policy" "image" {
  repository = aws_ecr_repository.image.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the 20 newest images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 20 }
      action       = { type = "expire" }
    }]
  })
}
