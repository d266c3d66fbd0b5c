# Least privilege. The Celery workers (the only components that run Atelier's task code) may read
# the inbox, write renders and reports under Atelier's prefixes, and use this stack's key through
# S3; nothing else, and no deletes. The other components get a role with no permissions. The
# execution role (ECS itself) may pull the image, write the logs and read this stack's secret.

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# -- the Celery workers ---------------------------------------------------------------------------
resource "aws_iam_role" "worker" {
  name               = "${var.name}-worker"
  description        = "Atelier ${var.name}: Celery workers (render, quality check, report)"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "worker" {
  name   = "atelier-data"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

data "aws_iam_policy_document" "worker" {
  # Manifests and packshots: brands drop them, workers only read.
  statement {
    sid       = "ReadInbox"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.this["inbox"].arn}/*"]
  }

  # Renders are written once under renders/ (a HEAD first: the write-once check).
  statement {
    sid       = "ReadWriteRenders"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${aws_s3_bucket.this["renders"].arn}/renders/*"]
  }

  # Reports and contact sheets under campaigns/<campaign id>/.
  statement {
    sid       = "ReadWriteReports"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${aws_s3_bucket.this["reports"].arn}/campaigns/*"]
  }

  # Airflow task logs (remote logging): written by the workers, read by the api-server.
  statement {
    sid       = "ReadWriteTaskLogs"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${aws_s3_bucket.this["reports"].arn}/airflow-logs/*"]
  }

  # Listing: inputs are fingerprinted by listing their prefix, the reaper reconciles renders, and
  # without s3:ListBucket a HEAD of a missing key answers 403 instead of the 404 the write-once
  # check relies on (a HEAD has no s3:prefix to condition on, so this cannot be narrowed by prefix).
  statement {
    sid       = "ListAtelierBuckets"
    actions   = ["s3:ListBucket"]
    resources = [for b in aws_s3_bucket.this : b.arn]
  }

  # The stack's key, and only through S3 (SSE-KMS data keys for these buckets).
  statement {
    sid       = "UseKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }
}

# -- the other Airflow components: task logs only -------------------------------------------------
resource "aws_iam_role" "airflow" {
  name               = "${var.name}-airflow"
  description        = "Atelier ${var.name}: api-server, scheduler, dag-processor, triggerer, init (task logs only)"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "airflow" {
  name   = "atelier-task-logs"
  role   = aws_iam_role.airflow.id
  policy = data.aws_iam_policy_document.airflow.json
}

# Remote logging: the api-server reads the task logs workers wrote, the triggerer writes its own.
data "aws_iam_policy_document" "airflow" {
  statement {
    sid       = "ReadWriteTaskLogs"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = ["${aws_s3_bucket.this["reports"].arn}/airflow-logs/*"]
  }

  statement {
    sid       = "ListTaskLogs"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.this["reports"].arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["airflow-logs/*"]
    }
  }

  statement {
    sid       = "UseKeyThroughS3"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }
}

# -- ECS's execution role -------------------------------------------------------------------------
locals {
  # The image's ECR repository, when it is in ECR (other registries need no AWS permission).
  ecr_pattern        = "^([0-9]{12})\\.dkr\\.ecr\\.([a-z0-9-]+)\\.amazonaws\\.com/([^:@]+)"
  ecr_parts          = can(regex(local.ecr_pattern, var.image)) ? regex(local.ecr_pattern, var.image) : null
  ecr_repository_arn = local.ecr_parts == null ? null : "arn:${local.partition}:ecr:${local.ecr_parts[1]}:${local.ecr_parts[0]}:repository/${local.ecr_parts[2]}"
}

resource "aws_iam_role" "execution" {
  name               = "${var.name}-ecs-execution"
  description        = "Atelier ${var.name}: ECS pulls the image, writes logs, reads the settings secret"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy" "execution" {
  name   = "ecs-execution"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "Logs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.airflow.arn}:*"]
  }

  statement {
    sid       = "Settings"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.settings.arn]
  }

  statement {
    sid       = "DecryptSettings"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.this.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }

  dynamic "statement" {
    for_each = local.ecr_repository_arn == null ? [] : [1]
    content {
      sid       = "PullImage"
      actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
      resources = [local.ecr_repository_arn]
    }
  }

  dynamic "statement" {
    for_each = local.ecr_repository_arn == null ? [] : [1]
    content {
      sid       = "RegistryLogin"
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"] # GetAuthorizationToken has no resource-level permissions
    }
  }
}
