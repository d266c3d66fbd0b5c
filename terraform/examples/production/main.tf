# An Atelier environment: the module in ../.. with this account's network, certificate and image.
#   cp terraform.tfvars.example terraform.tfvars   # and fill it in
#   terraform init && terraform plan -out plan && terraform apply plan
# Keep the state in an encrypted, access-controlled backend: it holds the generated passwords.

terraform {
  required_version = ">= 1.6.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.60, < 6.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6, < 4.0"
    }
  }

  # backend "s3" {
  #   bucket       = "<state bucket>"
  #   key          = "atelier/production.tfstate"
  #   region       = "eu-west-1"
  #   encrypt      = true
  #   use_lockfile = true
  # }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      "environment" = "production"
      "managed-by"  = "terraform"
    }
  }
}

module "atelier" {
  source = "../.."

  name                = var.name
  vpc_id              = var.vpc_id
  private_subnet_ids  = var.private_subnet_ids
  allowed_cidr_blocks = var.allowed_cidr_blocks
  api_domain_name     = var.api_domain_name
  certificate_arn     = var.certificate_arn
  image               = var.image
  celery_workers      = var.celery_workers
  provider_urls       = var.provider_urls
  deletion_protection = true
}
