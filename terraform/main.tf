# Atelier on AWS: the buckets, the KMS key, the ledger database, Redis, least-privilege IAM and the
# Airflow 3 components on ECS Fargate (the image of docker/Dockerfile, the services of
# docker-compose.airflow.yml). See README.md for why ECS rather than MWAA.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name
  tags       = merge({ "app" = "atelier", "stack" = var.name }, var.tags)

  # The three buckets Atelier uses (config/buckets.txt locally) and what the workers may do there.
  buckets = {
    inbox   = "${var.name}-inbox"
    renders = "${var.name}-renders"
    reports = "${var.name}-reports"
  }
}
