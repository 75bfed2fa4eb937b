# One GCE VM running a pinned etcd release under systemd: client TLS with
# --client-cert-auth, auth with per-user roles, data on a persistent disk, no external
# address. The startup script (templates/etcd-startup.sh.tftpl) does the installing.

locals {
  etcd_pki_dir          = "/etc/etcd/pki"
  etcd_data_device_name = "etcd-data"

  # Values for templates/etcd.flags.tftpl; tests/deploy renders the same template.
  etcd_flags_vars = {
    pki_dir                   = local.etcd_pki_dir
    auto_compaction_retention = var.etcd_auto_compaction_retention
  }

  # Values for templates/etcd-startup.sh.tftpl; tests/deploy checks the names match.
  etcd_startup_vars = {
    etcd_version          = var.etcd_version
    etcd_sha256           = var.etcd_sha256
    project_id            = var.project_id
    secret_prefix         = local.secret_prefix
    node_name             = var.etcd_instance_name
    private_ip            = google_compute_address.etcd.address
    data_disk_device_name = local.etcd_data_device_name
    pki_dir               = local.etcd_pki_dir
    etcd_flags            = templatefile("${path.module}/templates/etcd.flags.tftpl", local.etcd_flags_vars)
    bootstrap_script      = file("${path.module}/templates/etcd-bootstrap.sh")
    gateway_user          = var.etcd_gateway_user
    operator_user         = var.etcd_operator_user
    config_prefix         = local.config_prefix
  }

  # The key space the function reads and operators write.
  config_prefix = "/config/"
}

resource "google_service_account" "etcd" {
  account_id   = "${var.etcd_instance_name}-vm"
  display_name = "etcd VM (${var.etcd_instance_name})"

  depends_on = [google_project_service.required]
}

# A fixed private address: it is in the server certificate and in ETCD_ENDPOINTS.
resource "google_compute_address" "etcd" {
  name         = "${var.etcd_instance_name}-ip"
  region       = var.region
  subnetwork   = local.subnetwork
  address_type = "INTERNAL"
  address      = var.etcd_private_ip
}

resource "google_compute_disk" "etcd_data" {
  name   = "${var.etcd_instance_name}-data"
  zone   = local.zone
  type   = var.etcd_disk_type
  size   = var.etcd_disk_size_gb
  labels = local.labels

  depends_on = [google_project_service.required]
}

resource "google_compute_instance" "etcd" {
  name                      = var.etcd_instance_name
  zone                      = local.zone
  machine_type              = var.etcd_machine_type
  labels                    = local.labels
  deletion_protection       = var.deletion_protection
  allow_stopping_for_update = true

  boot_disk {
    initialize_params {
      image = var.etcd_image
      size  = 10
      type  = "pd-balanced"
    }
  }

  attached_disk {
    source      = google_compute_disk.etcd_data.id
    device_name = local.etcd_data_device_name
  }

  # No access_config block: the VM has no external IP address.
  network_interface {
    subnetwork = local.subnetwork
    network_ip = google_compute_address.etcd.address
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
    email  = google_service_account.etcd.email
    scopes = ["cloud-platform"]
  }

  metadata = {
    # A metadata key (not metadata_startup_script), so a template change updates the
    # VM in place and takes effect at the next boot instead of replacing the VM.
    startup-script         = templatefile("${path.module}/templates/etcd-startup.sh.tftpl", local.etcd_startup_vars)
    enable-oslogin         = "TRUE"
    block-project-ssh-keys = "TRUE"
  }

  depends_on = [
    google_secret_manager_secret_version.etcd,
    google_secret_manager_secret_iam_member.etcd_vm,
    google_compute_router_nat.config,
  ]
}

# Operators: IAP tunnel to this instance only, OS Login with sudo, and the right to
# act as the VM's service account (OS Login requires it when the VM has one).
resource "google_iap_tunnel_instance_iam_member" "operators" {
  for_each = toset(var.operator_members)

  zone     = local.zone
  instance = google_compute_instance.etcd.name
  role     = "roles/iap.tunnelResourceAccessor"
  member   = each.value
}

resource "google_compute_instance_iam_member" "operators" {
  for_each = toset(var.operator_members)

  zone          = local.zone
  instance_name = google_compute_instance.etcd.name
  role          = "roles/compute.osAdminLogin"
  member        = each.value
}

resource "google_service_account_iam_member" "operators" {
  for_each = toset(var.operator_members)

  service_account_id = google_service_account.etcd.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}
