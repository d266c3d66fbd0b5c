output "bucket_names" {
  description = "The inbox, renders and reports buckets (set as ATELIER_*_BUCKET; brands' inbox prefixes in config/brands.json must name the inbox bucket)."
  value       = { for k, b in aws_s3_bucket.this : k => b.id }
}

output "kms_key_arn" {
  description = "The stack's KMS key (S3, RDS, ElastiCache, secrets, logs)."
  value       = aws_kms_key.this.arn
}

output "db_endpoint" {
  description = "The Postgres instance (databases airflow and atelier), reachable from the tasks only."
  value       = aws_db_instance.this.endpoint
}

output "redis_endpoint" {
  description = "The Redis primary endpoint (TLS and AUTH), reachable from the tasks only."
  value       = aws_elasticache_replication_group.this.primary_endpoint_address
}

output "settings_secret_arn" {
  description = "The Secrets Manager secret holding the connection URLs and secrets (JSON, one key per setting)."
  value       = aws_secretsmanager_secret.settings.arn
}

output "api_load_balancer_dns_name" {
  description = "Point api_domain_name at this (CNAME or Route 53 alias)."
  value       = aws_lb.api.dns_name
}

output "airflow_url" {
  description = "The Airflow UI and REST API (user admin; its password is ATELIER_AIRFLOW_PASSWORD in the settings secret)."
  value       = "https://${var.api_domain_name}"
}

output "worker_role_arn" {
  description = "The Celery workers' IAM role (the only one with access to the buckets)."
  value       = aws_iam_role.worker.arn
}

output "ecs_cluster_name" {
  description = "The ECS cluster running the Airflow components."
  value       = aws_ecs_cluster.this.name
}

output "init_run_task_command" {
  description = "Runs the one-shot init (ledger and Airflow migrations, pools) before a deploy; wait for it to stop with exit code 0."
  value = join(" ", [
    "aws ecs run-task --cluster ${aws_ecs_cluster.this.name} --launch-type FARGATE",
    "--task-definition ${aws_ecs_task_definition.this["init"].arn}",
    "--network-configuration 'awsvpcConfiguration={subnets=[${join(",", var.private_subnet_ids)}],securityGroups=[${aws_security_group.tasks.id}],assignPublicIp=DISABLED}'",
  ])
}
