# etcd on GCE: one VM, or three in different zones of the region (etcd_cluster_size),
# each running a pinned etcd release under systemd with client and peer TLS
# (--client-cert-auth, --peer-client-cert-auth), auth with per-user roles, data on its
# own persistent disk, and no external address. The startup script
# (templates/etcd-startup.sh.tftpl) does the installing; the members form one cluster
# from a static initial-cluster list.

locals {
  etcd_pki_dir          = "/etc/etcd/pki"
  etcd_data_device_name = "etcd-data"

  # One member keeps the single VM's name (and state); three are <name>-0, -1, -2.
  etcd_member_names = var.etcd_cluster_size == 1 ? [var.etcd_instance_name] : [
    for i in range(var.etcd_cluster_size) : "${var.etcd_instance_name}-${i}"
  ]

  # Three members go to three zones (given, or the region's first three), so losing a
  # zone loses one member and the other two keep quorum.
  etcd_zones = var.etcd_cluster_size == 1 ? [local.zone] : (
    length(var.etcd_zones) > 0 ? var.etcd_zones : try(slice(sort(data.google_compute_zones.available[0].names), 0, var.etcd_cluster_size), [])
  )

  etcd_member_ips = google_compute_address.etcd[*].address

  # Peers authenticate each other with the server certificate (its SANs name every
  # member); clients reach any member on 2379.
  etcd_initial_cluster = join(",", [
    for i, name in local.etcd_member_names : "${name}=https://${local.etcd_member_ips[i]}:2380"
  ])
  etcd_client_urls = join(",", [for ip in local.etcd_member_ips : "https://${ip}:2379"])

  # Values for templates/etcd.flags.tftpl; tests/deploy renders the same template.
  etcd_flags_vars = {
    pki_dir                   = local.etcd_pki_dir
    auto_compaction_retention = var.etcd_auto_compaction_retention
  }

  # Values for templates/etcd-startup.sh.tftpl shared by every member; each member adds
  # local.etcd_member_vars[i]. tests/deploy checks the names match the template's.
  etcd_startup_vars = {
    etcd_version           = var.etcd_version
    etcd_sha256            = var.etcd_sha256
    project_id             = var.project_id
    secret_prefix          = local.secret_prefix
    data_disk_device_name  = local.etcd_data_device_name
    pki_dir                = local.etcd_pki_dir
    etcd_flags             = templatefile("${path.module}/templates/etcd.flags.tftpl", local.etcd_flags_vars)
    node_flags_script      = file("${path.module}/templates/etcd-node-flags.sh")
    bootstrap_script       = file("${path.module}/templates/etcd-bootstrap.sh")
    backup_script          = file("${path.module}/templates/etcd-backup.sh")
    restore_script         = file("${path.module}/../scripts/restore.sh")
    gateway_user           = var.etcd_gateway_user
    operator_user          = var.etcd_operator_user
    config_prefix          = local.config_prefix
    initial_cluster        = local.etcd_initial_cluster
    cluster_token          = var.etcd_instance_name
    cluster_client_urls    = local.etcd_client_urls
    backup_bucket          = google_storage_bucket.etcd_backups.name
    backup_service_account = google_service_account.etcd_backup.email
    backup_interval        = var.etcd_backup_interval
  }

  # Per member: its name and address; member 0 creates etcd's users and roles.
  etcd_member_vars = [
    for i, name in local.etcd_member_names : {
      node_name        = name
      private_ip       = local.etcd_member_ips[i]
      bootstrap_member = i == 0 ? "true" : "false"
    }
  ]

  # The key space the function reads and operators write.
  config_prefix = "/config/"
}

data "google_compute_zones" "available" {
  count = var.etcd_cluster_size > 1 && length(var.etcd_zones) == 0 ? 1 : 0

  region = var.region
  status = "UP"

  depends_on = [google_project_service.required]
}

resource "google_service_account" "etcd" {
  account_id   = "${var.etcd_instance_name}-vm"
  display_name = "etcd VMs (${var.etcd_instance_name})"

  depends_on = [google_project_service.required]
}

# Fixed private addresses: they are in the server certificate, the initial cluster and
# ETCD_ENDPOINTS.
resource "google_compute_address" "etcd" {
  count = var.etcd_cluster_size

  name         = "${local.etcd_member_names[count.index]}-ip"
  region       = var.region
  subnetwork   = local.subnetwork
  address_type = "INTERNAL"
  address      = count.index == 0 ? var.etcd_private_ip : null
}

resource "google_compute_disk" "etcd_data" {
  count = var.etcd_cluster_size

  #checkov:skip=CKV_GCP_37:Google-managed encryption at rest; a customer-supplied key must be sent with every start, so the VM could not restart by itself after host maintenance.
  name   = "${local.etcd_member_names[count.index]}-data"
  zone   = local.etcd_zones[count.index]
  type   = var.etcd_disk_type
  size   = var.etcd_disk_size_gb
  labels = local.labels

  depends_on = [google_project_service.required]
}

resource "google_compute_instance" "etcd" {
  count = var.etcd_cluster_size

  #checkov:skip=CKV_GCP_38:Google-managed encryption at rest; a customer-supplied boot disk key must be sent with every start, which breaks automatic restart.
  name                      = local.etcd_member_names[count.index]
  zone                      = local.etcd_zones[count.index]
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
    source      = google_compute_disk.etcd_data[count.index].id
    device_name = local.etcd_data_device_name
  }

  # No access_config block: the VM has no external IP address.
  network_interface {
    subnetwork = local.subnetwork
    network_ip = google_compute_address.etcd[count.index].address
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
    startup-script = templatefile("${path.module}/templates/etcd-startup.sh.tftpl",
    merge(local.etcd_startup_vars, local.etcd_member_vars[count.index]))
    enable-oslogin         = "TRUE"
    block-project-ssh-keys = "TRUE"
  }

  lifecycle {
    precondition {
      condition     = length(local.etcd_zones) >= var.etcd_cluster_size
      error_message = "etcd_zones must list at least etcd_cluster_size zones."
    }
  }

  depends_on = [
    google_secret_manager_secret_version.etcd,
    google_secret_manager_secret_iam_member.etcd_vm,
    google_compute_router_nat.config,
    google_service_account_iam_member.etcd_vm_uploads_backups,
  ]
}

# The single VM's resources keep their state when they gained `count`.
moved {
  from = google_compute_address.etcd
  to   = google_compute_address.etcd[0]
}

moved {
  from = google_compute_disk.etcd_data
  to   = google_compute_disk.etcd_data[0]
}

moved {
  from = google_compute_instance.etcd
  to   = google_compute_instance.etcd[0]
}

# Operators: IAP tunnel to the etcd VMs only, OS Login with sudo, and the right to act
# as the VMs' service account (OS Login requires it when the VM has one).
locals {
  etcd_operator_grants = {
    for pair in setproduct(var.operator_members, range(var.etcd_cluster_size)) :
    "${pair[0]}/${local.etcd_member_names[pair[1]]}" => { member = pair[0], index = pair[1] }
  }
}

resource "google_iap_tunnel_instance_iam_member" "operators" {
  for_each = local.etcd_operator_grants

  zone     = google_compute_instance.etcd[each.value.index].zone
  instance = google_compute_instance.etcd[each.value.index].name
  role     = "roles/iap.tunnelResourceAccessor"
  member   = each.value.member
}

resource "google_compute_instance_iam_member" "operators" {
  for_each = local.etcd_operator_grants

  zone          = google_compute_instance.etcd[each.value.index].zone
  instance_name = google_compute_instance.etcd[each.value.index].name
  role          = "roles/compute.osAdminLogin"
  member        = each.value.member
}

resource "google_service_account_iam_member" "operators" {
  for_each = toset(var.operator_members)

  service_account_id = google_service_account.etcd.name
  role               = "roles/iam.serviceAccountUser"
  member             = each.value
}
