# A private network for etcd and the function's egress path into it. Pass `network`
# and `subnetwork` to use existing ones instead.

resource "google_compute_network" "config" {
  count = var.network == null ? 1 : 0

  name                    = "${var.name}-vpc"
  auto_create_subnetworks = false

  depends_on = [google_project_service.required]
}

resource "google_compute_subnetwork" "config" {
  count = var.subnetwork == null ? 1 : 0

  name          = "${var.name}-subnet"
  region        = var.region
  network       = local.network
  ip_cidr_range = var.subnet_cidr
  # The VM reaches Secret Manager without an external address.
  private_ip_google_access = true
}

# The function's egress: a Serverless VPC Access connector on its own /28. Its range is
# the only source the etcd firewall rule admits. (Why a connector and not Direct VPC
# egress: README.md ("Deploy").)
resource "google_vpc_access_connector" "config" {
  name          = var.connector_name
  region        = var.region
  network       = local.network
  ip_cidr_range = var.connector_cidr
  machine_type  = var.connector_machine_type
  min_instances = var.connector_min_instances
  max_instances = var.connector_max_instances

  depends_on = [google_project_service.required]
}

# The VM has no external address; Cloud NAT lets it download the pinned etcd release
# (and Debian updates). Nothing can connect in through NAT.
resource "google_compute_router" "config" {
  count = var.create_nat ? 1 : 0

  name    = "${var.name}-router"
  region  = var.region
  network = local.network
}

resource "google_compute_router_nat" "config" {
  count = var.create_nat ? 1 : 0

  name                               = "${var.name}-nat"
  router                             = google_compute_router.config[0].name
  region                             = var.region
  nat_ip_allocate_option             = "AUTO_ONLY"
  source_subnetwork_ip_ranges_to_nat = "LIST_OF_SUBNETWORKS"

  subnetwork {
    name                    = local.subnetwork
    source_ip_ranges_to_nat = ["ALL_IP_RANGES"]
  }

  log_config {
    enable = true
    filter = "ERRORS_ONLY"
  }
}

# etcd's client port: only from the connector's range (and the processor), only to the etcd VM's identity.
resource "google_compute_firewall" "etcd_client" {
  name      = "${var.name}-etcd-client"
  network   = local.network
  direction = "INGRESS"
  priority  = 1000

  allow {
    protocol = "tcp"
    ports    = ["2379"]
  }

  # The function's range, or the processor VM (processor.tf) from its own address.
  source_ranges           = [var.connector_cidr]
  source_service_accounts = [google_service_account.processor.email]
  target_service_accounts = [google_service_account.etcd.email]
}

# SSH only from Identity-Aware Proxy's TCP forwarding range, so the VMs (etcd and the
# processor) need no external address and IAM decides who may tunnel.
resource "google_compute_firewall" "iap_ssh" {
  name      = "${var.name}-iap-ssh"
  network   = local.network
  direction = "INGRESS"
  priority  = 1000

  allow {
    protocol = "tcp"
    ports    = ["22"]
  }

  source_ranges           = ["35.235.240.0/20"]
  target_service_accounts = [google_service_account.etcd.email, google_service_account.processor.email]
}

# One rule for both VMs now; the etcd VM's rule becomes it in place.
moved {
  from = google_compute_firewall.etcd_iap_ssh
  to   = google_compute_firewall.iap_ssh
}

# Between etcd members only: raft traffic (2380, peer TLS) and the client port (2379),
# which a starting member asks whether the cluster already exists.
resource "google_compute_firewall" "etcd_peer" {
  name      = "${var.name}-etcd-peer"
  network   = local.network
  direction = "INGRESS"
  priority  = 1000

  allow {
    protocol = "tcp"
    ports    = ["2379", "2380"]
  }

  source_service_accounts = [google_service_account.etcd.email]
  target_service_accounts = [google_service_account.etcd.email]
}
