variable "name" {
  description = "Name prefix of every resource (buckets are <name>-inbox, <name>-renders, <name>-reports, so it must be globally unique in S3 together with those suffixes)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,30}[a-z0-9]$", var.name))
    error_message = "name: 4-32 characters, lowercase letters, digits and hyphens, starting with a letter (it becomes part of S3 bucket names)."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

# -- network --------------------------------------------------------------------------------------
variable "vpc_id" {
  description = "VPC the stack runs in."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]{8,17}$", var.vpc_id))
    error_message = "vpc_id: a VPC id (vpc-...)."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets (at least two, in different availability zones) for the tasks, the database, Redis and the internal load balancer. They need a route to S3, ECR, Secrets Manager and CloudWatch Logs (NAT or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2 && alltrue([for s in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]{8,17}$", s))])
    error_message = "private_subnet_ids: at least two subnet ids (subnet-...)."
  }
}

variable "allowed_cidr_blocks" {
  description = "Networks allowed to reach the Airflow UI and REST API (HTTPS on the internal load balancer), e.g. the office VPN."
  type        = list(string)

  validation {
    condition     = length(var.allowed_cidr_blocks) > 0 && alltrue([for c in var.allowed_cidr_blocks : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "allowed_cidr_blocks: one or more CIDR blocks, not 0.0.0.0/0 (the UI is not for the internet)."
  }
}

variable "api_domain_name" {
  description = "DNS name of the Airflow api-server (UI, REST API, and the execution API the workers call), covered by certificate_arn; point it at the load balancer (output api_load_balancer_dns_name)."
  type        = string

  validation {
    condition     = can(regex("^([a-z0-9]([a-z0-9-]*[a-z0-9])?\\.)+[a-z]{2,}$", var.api_domain_name))
    error_message = "api_domain_name: a DNS name such as airflow.example.com."
  }
}

variable "certificate_arn" {
  description = "ACM certificate for api_domain_name (the load balancer terminates TLS with it)."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:acm:[a-z0-9-]+:[0-9]{12}:certificate/.+$", var.certificate_arn))
    error_message = "certificate_arn: an ACM certificate ARN."
  }
}

# -- the image and the Airflow components ---------------------------------------------------------
variable "image" {
  description = "The Atelier image (docker/Dockerfile), pushed to a registry the tasks can pull from, with an immutable version tag or a digest."
  type        = string

  validation {
    condition     = can(regex("^[^:@]+(:[A-Za-z0-9_.-]+|@sha256:[0-9a-f]{64})$", var.image)) && !endswith(var.image, ":latest")
    error_message = "image: name:tag or name@sha256:digest, and not :latest."
  }
}

variable "celery_workers" {
  description = "Number of Celery worker tasks (each is its own machine: hostname, disk)."
  type        = number
  default     = 2

  validation {
    condition     = var.celery_workers >= 1 && var.celery_workers <= 50 && floor(var.celery_workers) == var.celery_workers
    error_message = "celery_workers: a whole number from 1 to 50."
  }
}

variable "worker_cpu" {
  description = "CPU units of one Celery worker task (1024 = 1 vCPU)."
  type        = number
  default     = 2048

  validation {
    condition     = contains([512, 1024, 2048, 4096, 8192, 16384], var.worker_cpu)
    error_message = "worker_cpu: a Fargate CPU size (512, 1024, 2048, 4096, 8192 or 16384)."
  }
}

variable "worker_memory" {
  description = "Memory (MiB) of one Celery worker task; must be a valid Fargate combination with worker_cpu."
  type        = number
  default     = 8192

  validation {
    condition     = var.worker_memory >= 1024 && var.worker_memory <= 122880 && var.worker_memory % 1024 == 0
    error_message = "worker_memory: a whole number of GiB in MiB, from 1024 to 122880."
  }
}

variable "provider_urls" {
  description = "Endpoint of each remote render provider of config/providers.json, by provider name (set as ATELIER_PROVIDER_<NAME>_URL), e.g. { predictions = \"https://api.vendor.example\" }. HTTPS only."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k, v in var.provider_urls : can(regex("^[a-z][a-z0-9_]*$", k)) && startswith(v, "https://")])
    error_message = "provider_urls: provider names (lowercase, digits, underscores) mapped to https:// URLs."
  }
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the components' logs."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days: one of the retention periods CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, ... 3653)."
  }
}

# -- S3 -------------------------------------------------------------------------------------------
variable "inbox_expiration_days" {
  description = "Days after which a drop's manifest and packshots in the inbox bucket expire (their renders stay)."
  type        = number
  default     = 90

  validation {
    condition     = var.inbox_expiration_days >= 1 && var.inbox_expiration_days <= 3650
    error_message = "inbox_expiration_days: from 1 to 3650."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days a replaced or deleted object's previous version is kept in every bucket."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && var.noncurrent_version_expiration_days <= 365
    error_message = "noncurrent_version_expiration_days: from 1 to 365."
  }
}

variable "access_log_expiration_days" {
  description = "Days S3 and load balancer access logs are kept."
  type        = number
  default     = 365

  validation {
    condition     = var.access_log_expiration_days >= 30
    error_message = "access_log_expiration_days: at least 30."
  }
}

# -- KMS ------------------------------------------------------------------------------------------
variable "kms_deletion_window_days" {
  description = "Waiting period before the KMS key is deleted after a destroy."
  type        = number
  default     = 30

  validation {
    condition     = var.kms_deletion_window_days >= 7 && var.kms_deletion_window_days <= 30
    error_message = "kms_deletion_window_days: from 7 to 30."
  }
}

# -- RDS (the ledger and Airflow's metadata database) ---------------------------------------------
variable "db_instance_class" {
  description = "RDS instance class of the Postgres instance holding the ledger (database atelier) and Airflow's metadata (database airflow)."
  type        = string
  default     = "db.m6g.large"

  validation {
    condition     = startswith(var.db_instance_class, "db.")
    error_message = "db_instance_class: an RDS instance class (db....)."
  }
}

variable "db_engine_version" {
  description = "Postgres major version (the local stack runs 15)."
  type        = string
  default     = "15"

  validation {
    condition     = contains(["15", "16", "17"], var.db_engine_version)
    error_message = "db_engine_version: 15, 16 or 17."
  }
}

variable "db_allocated_storage_gb" {
  description = "Initial storage of the database (GiB); it grows automatically up to four times this."
  type        = number
  default     = 100

  validation {
    condition     = var.db_allocated_storage_gb >= 20 && var.db_allocated_storage_gb <= 16384
    error_message = "db_allocated_storage_gb: from 20 to 16384."
  }
}

variable "db_multi_az" {
  description = "Run the database with a synchronous standby in another availability zone."
  type        = bool
  default     = true
}

variable "db_backup_retention_days" {
  description = "Days automated backups (point-in-time recovery) of the database are kept."
  type        = number
  default     = 14

  validation {
    condition     = var.db_backup_retention_days >= 7 && var.db_backup_retention_days <= 35
    error_message = "db_backup_retention_days: from 7 to 35."
  }
}

variable "deletion_protection" {
  description = "Protect the database and the load balancer against deletion (turn off only to destroy a test environment)."
  type        = bool
  default     = true
}

# -- ElastiCache Redis (Celery broker, shared rate limits and circuit breakers) --------------------
variable "redis_node_type" {
  description = "ElastiCache node type of the Redis replication group."
  type        = string
  default     = "cache.t4g.medium"

  validation {
    condition     = startswith(var.redis_node_type, "cache.")
    error_message = "redis_node_type: an ElastiCache node type (cache....)."
  }
}

variable "redis_snapshot_retention_days" {
  description = "Days Redis snapshots are kept."
  type        = number
  default     = 7

  validation {
    condition     = var.redis_snapshot_retention_days >= 1 && var.redis_snapshot_retention_days <= 35
    error_message = "redis_snapshot_retention_days: from 1 to 35."
  }
}
