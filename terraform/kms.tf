# One customer-managed key for everything Atelier stores: objects, the database, Redis, secrets, logs.
resource "aws_kms_key" "this" {
  description             = "Atelier ${var.name}: S3 objects, RDS, ElastiCache, secrets and logs"
  enable_key_rotation     = true
  rotation_period_in_days = 365
  deletion_window_in_days = var.kms_deletion_window_days
  policy                  = data.aws_iam_policy_document.kms.json
  tags                    = local.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:A key policy's "*" resource is the key itself; kms:* for the account root is AWS's default key policy, which hands the decision to IAM policies instead of locking the key.
  #checkov:skip=CKV_AWS_111:As CKV_AWS_109: the resource is this key only, and the principal is this account.
  #checkov:skip=CKV_AWS_356:As CKV_AWS_109: in a key policy the resource can only be "*", meaning this key.
  # Key administration stays with the account (IAM policies decide who); without this statement
  # the key could become unmanageable.
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"] # in a key policy "*" is this key
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # CloudWatch Logs encrypts the components' log groups with the key.
  statement {
    sid       = "CloudWatchLogs"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"]
    resources = ["*"] # in a key policy "*" is this key
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:/atelier/${var.name}/*"]
    }
  }
}
