output "airflow_url" {
  description = "The Airflow UI and REST API."
  value       = module.atelier.airflow_url
}

output "api_load_balancer_dns_name" {
  description = "Point the api domain name at this."
  value       = module.atelier.api_load_balancer_dns_name
}

output "bucket_names" {
  description = "The inbox, renders and reports buckets."
  value       = module.atelier.bucket_names
}

output "init_run_task_command" {
  description = "Run before each deploy (migrations, pools)."
  value       = module.atelier.init_run_task_command
}
