provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_project" "this" {
  project_id = var.project_id
}

locals {
  zone = coalesce(var.zone, "${var.region}-b")

  # Everything the function and the VM need; created by network.tf unless given.
  network    = coalesce(var.network, one(google_compute_network.config[*].self_link))
  subnetwork = coalesce(var.subnetwork, one(google_compute_subnetwork.config[*].self_link))

  labels = merge({ app = "api-gateway-config" }, var.labels)
}
