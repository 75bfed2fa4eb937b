# TLS material and etcd passwords, made here and kept in Secret Manager. The VM
# fetches its share at boot; the function gets its share mounted as files (and its
# password as a secret environment variable).
#
# These values are also in the Terraform state: keep the state in a bucket only the
# operators can read (README.md, "Security model").

locals {
  secret_prefix = var.etcd_instance_name

  # etcd user -> certificate Common Name; etcd maps a certificate's CN to that user.
  etcd_clients = {
    root      = "root"
    gateway   = var.etcd_gateway_user
    operator  = var.etcd_operator_user
    processor = local.processor_etcd_user
  }

  # Secret suffix -> value. The secret id is "<secret_prefix>-<suffix>".
  etcd_secret_values = merge(
    {
      "ca-cert"           = tls_self_signed_cert.ca.cert_pem
      "server-cert"       = tls_locally_signed_cert.server.cert_pem
      "server-key"        = tls_private_key.server.private_key_pem
      "root-password"     = random_password.etcd["root"].result
      "gateway-password"  = random_password.etcd["gateway"].result
      "operator-password" = random_password.etcd["operator"].result
    },
    { "processor-password" = random_password.etcd["processor"].result },
    { for client, _ in local.etcd_clients : "${client}-cert" => tls_locally_signed_cert.client[client].cert_pem },
    { for client, _ in local.etcd_clients : "${client}-key" => tls_private_key.client[client].private_key_pem },
  )

  # What each identity may read.
  etcd_vm_secrets = [
    "ca-cert", "server-cert", "server-key",
    "root-cert", "root-key", "root-password",
    "gateway-password",
    "operator-cert", "operator-key", "operator-password",
    "processor-password",
  ]
  function_secrets  = ["ca-cert", "gateway-cert", "gateway-key", "gateway-password"]
  processor_secrets = ["ca-cert", "processor-cert", "processor-key", "processor-password"]
}

resource "tls_private_key" "ca" {
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_self_signed_cert" "ca" {
  private_key_pem       = tls_private_key.ca.private_key_pem
  is_ca_certificate     = true
  validity_period_hours = var.ca_validity_hours

  subject {
    common_name  = "${var.name} etcd CA"
    organization = var.name
  }

  allowed_uses = ["cert_signing", "crl_signing", "digital_signature"]
}

resource "tls_private_key" "server" {
  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_cert_request" "server" {
  private_key_pem = tls_private_key.server.private_key_pem

  subject {
    common_name  = var.etcd_instance_name
    organization = var.name
  }

  # One certificate for every member, as server and as peer: its SANs name them all.
  ip_addresses = concat(local.etcd_member_ips, ["127.0.0.1"])
  dns_names = concat(["localhost"], local.etcd_member_names, [
    for i, name in local.etcd_member_names : "${name}.${local.etcd_zones[i]}.c.${var.project_id}.internal"
  ])
}

resource "tls_locally_signed_cert" "server" {
  cert_request_pem      = tls_cert_request.server.cert_request_pem
  ca_private_key_pem    = tls_private_key.ca.private_key_pem
  ca_cert_pem           = tls_self_signed_cert.ca.cert_pem
  validity_period_hours = var.cert_validity_hours
  early_renewal_hours   = var.cert_early_renewal_hours

  # client_auth too: etcd's gRPC gateway dials the server with this certificate.
  allowed_uses = ["digital_signature", "key_encipherment", "server_auth", "client_auth"]
}

resource "tls_private_key" "client" {
  for_each = local.etcd_clients

  algorithm   = "ECDSA"
  ecdsa_curve = "P256"
}

resource "tls_cert_request" "client" {
  for_each = local.etcd_clients

  private_key_pem = tls_private_key.client[each.key].private_key_pem

  subject {
    # The function's (and the processor's) certificate names no user: it logs in with
    # its password, and etcd's JSON gateway (its cold-start list) refuses certificates
    # with a CN once auth is on.
    common_name  = contains(["gateway", "processor"], each.key) ? null : each.value
    organization = var.name
  }
}

resource "tls_locally_signed_cert" "client" {
  for_each = local.etcd_clients

  cert_request_pem      = tls_cert_request.client[each.key].cert_request_pem
  ca_private_key_pem    = tls_private_key.ca.private_key_pem
  ca_cert_pem           = tls_self_signed_cert.ca.cert_pem
  validity_period_hours = var.cert_validity_hours
  early_renewal_hours   = var.cert_early_renewal_hours
  allowed_uses          = ["digital_signature", "client_auth"]
}

resource "random_password" "etcd" {
  for_each = local.etcd_clients

  length  = 32
  special = false
}

resource "google_secret_manager_secret" "etcd" {
  for_each = local.etcd_secret_values

  secret_id = "${local.secret_prefix}-${each.key}"
  labels    = local.labels

  replication {
    auto {}
  }

  depends_on = [google_project_service.required]
}

resource "google_secret_manager_secret_version" "etcd" {
  for_each = local.etcd_secret_values

  secret      = google_secret_manager_secret.etcd[each.key].id
  secret_data = each.value
}

resource "google_secret_manager_secret_iam_member" "etcd_vm" {
  for_each = toset(local.etcd_vm_secrets)

  secret_id = google_secret_manager_secret.etcd[each.value].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.etcd.email}"
}

resource "google_secret_manager_secret_iam_member" "function" {
  for_each = toset(local.function_secrets)

  secret_id = google_secret_manager_secret.etcd[each.value].id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.function.email}"
}
