variable "region" {
  description = "AWS region of the environment."
  type        = string

  validation {
    condition     = can(regex("^[a-z]{2}(-gov)?-[a-z]+-[0-9]$", var.region))
    error_message = "region: an AWS region such as eu-west-1."
  }
}

variable "name" {
  description = "Name prefix of the environment's resources (see the module's variable)."
  type        = string
}

variable "vpc_id" {
  description = "VPC of the environment."
  type        = string
}

variable "private_subnet_ids" {
  description = "Private subnets, at least two availability zones."
  type        = list(string)
}

variable "allowed_cidr_blocks" {
  description = "Networks allowed to reach the Airflow UI and REST API."
  type        = list(string)
}

variable "api_domain_name" {
  description = "DNS name of the Airflow api-server."
  type        = string
}

variable "certificate_arn" {
  description = "ACM certificate for api_domain_name."
  type        = string
}

variable "image" {
  description = "The Atelier image (docker/Dockerfile) with an immutable tag or digest."
  type        = string
}

variable "celery_workers" {
  description = "Number of Celery worker tasks."
  type        = number
  default     = 4
}

variable "provider_urls" {
  description = "Remote render providers' endpoints by provider name."
  type        = map(string)
  default     = {}
}
