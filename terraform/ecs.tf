# The Airflow 3 components on ECS Fargate, mirroring docker-compose.airflow.yml: the same image,
# the same commands and healthchecks, CeleryExecutor with Redis as broker and Postgres as result
# backend. Workers are separate tasks (their own hostname and disk) sharing only Postgres, Redis
# and S3. The one-shot init (migrations, pools) is a task definition run before each deploy:
#   aws ecs run-task ... (output init_run_task_command)

resource "aws_cloudwatch_log_group" "airflow" {
  name              = "/atelier/${var.name}/airflow"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.this.arn
  tags              = local.tags
}

resource "aws_ecs_cluster" "this" {
  name = var.name
  tags = local.tags

  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  configuration {
    execute_command_configuration {
      kms_key_id = aws_kms_key.this.arn
      logging    = "OVERRIDE"
      log_configuration {
        cloud_watch_encryption_enabled = true
        cloud_watch_log_group_name     = aws_cloudwatch_log_group.airflow.name
      }
    }
  }
}

locals {
  api_url = "https://${var.api_domain_name}"

  # Plain settings (the secret ones come from Secrets Manager, secrets.tf); names as in
  # config/local.env and docker-compose.airflow.yml.
  environment = merge(
    {
      AWS_DEFAULT_REGION                                = local.region
      ATELIER_S3_ENDPOINT                               = "" # the regional S3 endpoint
      ATELIER_INBOX_BUCKET                              = aws_s3_bucket.this["inbox"].id
      ATELIER_RENDERS_BUCKET                            = aws_s3_bucket.this["renders"].id
      ATELIER_REPORTS_BUCKET                            = aws_s3_bucket.this["reports"].id
      ATELIER_AIRFLOW_URL                               = local.api_url
      ATELIER_AIRFLOW_USER                              = "admin"
      AIRFLOW__CORE__EXECUTOR                           = "CeleryExecutor"
      AIRFLOW__CORE__LOAD_EXAMPLES                      = "False"
      AIRFLOW__CORE__PARALLELISM                        = tostring(8 * var.celery_workers)
      AIRFLOW__CORE__MAX_MAP_LENGTH                     = "1024"
      AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS          = "admin:admin"
      AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE = "/opt/airflow/passwords.json"
      AIRFLOW__CORE__EXECUTION_API_SERVER_URL           = "${local.api_url}/execution/"
      AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION        = "False"
      AIRFLOW__API__HOST                                = "0.0.0.0"
      AIRFLOW__API__PORT                                = "8080"
      AIRFLOW__API__BASE_URL                            = local.api_url
      AIRFLOW__API__WORKERS                             = "2"
      AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL          = "5"
      AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL = "30"
      AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT           = "600"
      AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK           = "True"
      AIRFLOW__CELERY__WORKER_CONCURRENCY               = "8"
      # As config/celery.env and compose: no prefetching, acks when a task ends, a visibility
      # timeout above the longest task, a dead worker's tries failed after 60 s without heartbeats.
      AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER                  = "1"
      AIRFLOW__CELERY__TASK_ACKS_LATE                              = "True"
      AIRFLOW__CELERY_BROKER_TRANSPORT_OPTIONS__VISIBILITY_TIMEOUT = "21600"
      AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT          = "60"
      AIRFLOW__CORE__HOSTNAME_CALLABLE                             = "atelier.airflow.hostname.hostname"
      # Task logs to S3 when a task ends (workers share no disk with the api-server).
      AIRFLOW__LOGGING__REMOTE_LOGGING         = "True"
      AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER = "s3://${aws_s3_bucket.this["reports"].id}/airflow-logs"
      AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID     = "atelier_s3"
      AIRFLOW__METRICS__STATSD_ON              = "False"
      # Tasks reach S3 with the worker role's credentials: no keys in the connection.
      AIRFLOW_CONN_ATELIER_S3 = jsonencode({ conn_type = "aws", extra = { region_name = local.region } })
    },
    { for name, url in var.provider_urls : "ATELIER_PROVIDER_${upper(name)}_URL" => url },
  )

  secrets = [
    for name in sort(keys(local.secret_settings)) : {
      name      = name
      valueFrom = "${aws_secretsmanager_secret.settings.arn}:${name}::"
    }
  ]

  # Component -> how it runs; the commands and healthchecks are docker-compose.airflow.yml's.
  components = {
    api-server = {
      command = tolist(["bash", "/opt/atelier/bin/api-server.sh"])
      health  = "curl --fail http://localhost:8080/api/v2/monitor/health"
      count   = 2
      cpu     = 1024
      memory  = 4096
      role    = aws_iam_role.airflow.arn
      port    = 8080
    }
    scheduler = {
      command = tolist(["scheduler"])
      health  = "curl --fail http://localhost:8974/health"
      count   = 1
      cpu     = 1024
      memory  = 4096
      role    = aws_iam_role.airflow.arn
      port    = null
    }
    dag-processor = {
      command = tolist(["dag-processor"])
      health  = "airflow jobs check --job-type DagProcessorJob --hostname \"$HOSTNAME\""
      count   = 1
      cpu     = 1024
      memory  = 4096
      role    = aws_iam_role.airflow.arn
      port    = null
    }
    triggerer = {
      command = tolist(["triggerer"])
      health  = "airflow jobs check --job-type TriggererJob --hostname \"$HOSTNAME\""
      count   = 1
      cpu     = 1024
      memory  = 2048
      role    = aws_iam_role.airflow.arn
      port    = null
    }
    worker = {
      command = tolist(["celery", "worker"])
      health  = "celery --app airflow.providers.celery.executors.celery_executor.app inspect ping -d \"celery@$HOSTNAME\""
      count   = var.celery_workers
      cpu     = var.worker_cpu
      memory  = var.worker_memory
      role    = aws_iam_role.worker.arn
      port    = 8793 # serve-logs: the api-server reads running tasks' logs from here
    }
  }

  # Settings of one component only: warm shutdown of Celery workers (the image's entrypoint
  # passes signals to the whole process group), as in compose.
  component_environment = {
    for name in keys(local.task_definitions) : name => { for k, v in { DUMB_INIT_SETSID = "0" } : k => v if name == "worker" }
  }

  # The one-shot init runs like a component, without a service.
  task_definitions = merge(local.components, {
    init = {
      command = tolist(["bash", "/opt/atelier/bin/airflow-init.sh"])
      health  = null
      count   = 0
      cpu     = 512
      memory  = 2048
      role    = aws_iam_role.airflow.arn
      port    = null
    }
  })
}

resource "aws_ecs_task_definition" "this" {
  #checkov:skip=CKV_AWS_336:Airflow writes its config, task logs and temporary files under AIRFLOW_HOME (/opt/airflow, which also holds the baked-in DAGs) and /tmp at run time; each task's root filesystem is its own ephemeral Fargate storage, never shared.
  for_each = local.task_definitions

  family                   = "${var.name}-${each.key}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = each.value.cpu
  memory                   = each.value.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = each.value.role
  tags                     = local.tags

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  container_definitions = jsonencode([merge(
    {
      name        = each.key
      image       = var.image
      essential   = true
      command     = each.value.command
      environment = [for k, v in merge(local.environment, local.component_environment[each.key]) : { name = k, value = v }]
      secrets     = local.secrets
      privileged  = false
      user        = "50000:0"
      portMappings = each.value.port == null ? [] : [
        { containerPort = each.value.port, protocol = "tcp" }
      ]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.airflow.name
          awslogs-region        = local.region
          awslogs-stream-prefix = each.key
        }
      }
    },
    # The healthcheck, for the long-running components (the init task exits when done).
    { for k, v in {
      healthCheck = {
        command     = ["CMD-SHELL", coalesce(each.value.health, "true")]
        interval    = 30
        timeout     = 10
        retries     = 5
        startPeriod = 60
      }
    } : k => v if each.value.health != null },
  )])
}

resource "aws_ecs_service" "this" {
  for_each = local.components

  name                   = each.key
  cluster                = aws_ecs_cluster.this.id
  task_definition        = aws_ecs_task_definition.this[each.key].arn
  desired_count          = each.value.count
  launch_type            = "FARGATE"
  platform_version       = "LATEST"
  propagate_tags         = "SERVICE"
  enable_execute_command = false
  tags                   = local.tags

  network_configuration {
    subnets          = var.private_subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  dynamic "load_balancer" {
    for_each = each.key == "api-server" ? [1] : []
    content {
      target_group_arn = aws_lb_target_group.api.arn
      container_name   = each.key
      container_port   = 8080
    }
  }

  depends_on = [aws_lb_listener.https]
}
