output "function_url" {
  description = "HTTPS URL of the function (scripts/smoke.sh takes it)."
  value       = google_cloudfunctions2_function.gateway.url
}

output "function_service_account" {
  description = "Runtime identity of the function; it can read only its own etcd secrets."
  value       = google_service_account.function.email
}

output "etcd_private_ip" {
  description = "Private address of the (first) etcd VM (no external address exists)."
  value       = google_compute_address.etcd[0].address
}

output "etcd_members" {
  description = "etcd members: name => {zone, private_ip}."
  value = { for i, vm in google_compute_instance.etcd : vm.name => {
    zone       = vm.zone
    private_ip = google_compute_address.etcd[i].address
  } }
}

output "etcd_backup_bucket" {
  description = "GCS bucket holding the scheduled etcd snapshots (README.md, \"Backups and restore\")."
  value       = google_storage_bucket.etcd_backups.name
}

output "etcd_endpoints" {
  description = "ETCD_ENDPOINTS as the function receives it; deploy.sh takes the same value."
  value       = local.function_env.ETCD_ENDPOINTS
}

output "egress_cidr" {
  description = "Range the function's traffic to etcd comes from (the VPC connector); the only source admitted on tcp:2379."
  value       = var.connector_cidr
}

output "vpc_connector" {
  description = "Serverless VPC Access connector for deploy.sh's --vpc-connector."
  value       = google_vpc_access_connector.config.id
}

output "etcd_secret_ids" {
  description = "Secret Manager secret ids of the etcd TLS material and passwords, by purpose."
  value       = { for suffix, secret in google_secret_manager_secret.etcd : suffix => secret.secret_id }
}

output "ssh_command" {
  description = "SSH to the etcd VM through IAP (needs roles/iap.tunnelResourceAccessor and OS Login; see operator_members)."
  value       = "gcloud compute ssh ${google_compute_instance.etcd[0].name} --project=${var.project_id} --zone=${google_compute_instance.etcd[0].zone} --tunnel-through-iap"
}

output "etcdctl_command" {
  description = "Run etcdctl as the operator user on the etcd VM through IAP; replace the trailing command as needed."
  value       = "gcloud compute ssh ${google_compute_instance.etcd[0].name} --project=${var.project_id} --zone=${google_compute_instance.etcd[0].zone} --tunnel-through-iap --command='sudo etcdctl-operator get --prefix /config/'"
}

output "smoke_command" {
  description = "Smoke test of the deployed function."
  value       = "scripts/smoke.sh ${google_cloudfunctions2_function.gateway.url}"
}

output "processor_url" {
  description = "Private URL of the data processor (PROCESSOR_URL of the function); reachable only from the function's egress range."
  value       = local.processor_url
}

output "processor_ssh_command" {
  description = "SSH to the processor VM through IAP, e.g. to read `journalctl -u processor`."
  value       = "gcloud compute ssh ${google_compute_instance.processor.name} --project=${var.project_id} --zone=${local.zone} --tunnel-through-iap"
}
