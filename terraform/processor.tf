# The data processor: one Compute Engine VM in the same private network, no external
# address, running `python -m processor` under systemd from the function's own source
# archive (function.tf). It reads etcd as its own read-only user (its prefix and
# /config/global/ only), and only the function's egress range may reach its port.

locals {
  # The etcd user the processor logs in as; etcd-bootstrap.sh creates it (same default).
  processor_etcd_user = "processor"
  processor_url       = "http://${google_compute_address.processor.address}:${var.processor_port}"

  # Values for templates/processor-startup.sh.tftpl; tests/deploy checks the names match.
  processor_startup_vars = {
    project_id     = var.project_id
    secret_prefix  = local.secret_prefix
    token_secret   = google_secret_manager_secret.processor_token.secret_id
    source_url     = "gs://${google_storage_bucket.source.name}/${google_storage_bucket_object.source.name}"
    etcd_endpoints = local.function_env.ETCD_ENDPOINTS
    etcd_user      = local.processor_etcd_user
    port           = var.processor_port
    drain_seconds  = var.processor_drain_seconds
    log_level      = var.log_level
  }
}

resource "google_service_account" "processor" {
  account_id   = "${var.processor_instance_name}-vm"
  display_name = "data processor VM (${var.processor_instance_name})"

  depends_on = [google_project_service.required]
}

# A fixed private address: the function's PROCESSOR_URL names it.
resource "google_compute_address" "processor" {
  name         = "${var.processor_instance_name}-ip"
  region       = var.region
  subnetwork   = local.subnetwork
  address_type = "INTERNAL"
  address      = var.processor_private_ip
}

# The bearer token the gateway sends and the processor checks.
resource "random_password" "processor_token" {
  length  = 48
  special = false
}

resource "google_secret_manager_secret" "processor_token" {
  secret_id = "${var.processor_instance_name}-token"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}

resource "google_secret_manager_secret_version" "processor_token" {
  secret      = google_secret_manager_secret.processor_token.id
  secret_data = random_password.processor_token.result
}

resource "google_secret_manager_secret_iam_member" "processor_token" {
  for_each = {
    processor = google_service_account.processor.email
    function  = google_service_account.function.email
  }

  secret_id = google_secret_manager_secret.processor_token.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${each.value}"
}

resource "google_secret_manager_secret_iam_member" "processor" {
  for_each = toset(local.processor_secrets)

  secret_id = google_secret_manager_secret.etcd[each.value].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.processor.email}"
}

# The source archive: read access to the function's bucket.
resource "google_storage_bucket_iam_member" "processor_source" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.processor.email}"
}

resource "google_project_iam_member" "processor_log_writer" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.processor.email}"
}

resource "google_compute_instance" "processor" {
  #checkov:skip=CKV_GCP_38:Google-managed encryption at rest; a customer-supplied boot disk key must be sent with every start, which breaks automatic restart.
  name                      = var.processor_instance_name
  zone                      = local.zone
  machine_type              = var.processor_machine_type
  labels                    = local.labels
  allow_stopping_for_update = true

  boot_disk {
    initialize_params {
      image = var.processor_image
      size  = 10
      type  = "pd-balanced"
    }
  }

  # No access_config block: the VM has no external IP address.
  network_interface {
    subnetwork = local.subnetwork
    network_ip = google_compute_address.processor.address
  }

  shielded_instance_config {
    enable_secure_boot          = true
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  scheduling {
    automatic_restart   = true
    on_host_maintenance = "MIGRATE"
  }

  service_account {
    email  = google_service_account.processor.email
    scopes = ["cloud-platform"]
  }

  metadata = {
    # A new source archive changes the script (its URL names the archive's hash): the
    # VM is updated in place and installs it at its next boot (README.md, "Deploy").
    startup-script         = templatefile("${path.module}/templates/processor-startup.sh.tftpl", local.processor_startup_vars)
    enable-oslogin         = "TRUE"
    block-project-ssh-keys = "TRUE"
  }

  depends_on = [
    google_secret_manager_secret_version.etcd,
    google_secret_manager_secret_version.processor_token,
    google_secret_manager_secret_iam_member.processor,
    google_secret_manager_secret_iam_member.processor_token,
    google_storage_bucket_iam_member.processor_source,
    google_compute_router_nat.config,
    google_compute_instance.etcd,
  ]
}

# The processor's port: only from the function's egress range, only to the processor.
resource "google_compute_firewall" "processor" {
  name      = "${var.name}-processor"
  network   = local.network
  direction = "INGRESS"
  priority  = 1000

  allow {
    protocol = "tcp"
    ports    = [tostring(var.processor_port)]
  }

  source_ranges           = [var.connector_cidr]
  target_service_accounts = [google_service_account.processor.email]
}
