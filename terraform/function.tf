# The gateway: a gen2 Cloud Function (Cloud Run underneath) with the same settings
# deploy.sh passes to `gcloud functions deploy`.

locals {
  source_dir = coalesce(var.source_dir, abspath("${path.module}/.."))

  # The same files .gcloudignore lets through for deploy.sh: the entry point, the
  # pinned requirements, and the two packages (without bytecode caches).
  source_files = sort(concat(
    ["main.py", "requirements.txt"],
    [for f in fileset(local.source_dir, "config_watch/**") : f if !strcontains(f, "__pycache__")],
    [for f in fileset(local.source_dir, "gateway/**") : f if !strcontains(f, "__pycache__")],
    # The processor VM (processor.tf) runs from this same archive.
    [for f in fileset(local.source_dir, "processor/**") : f if !strcontains(f, "__pycache__")],
  ))

  # Secret Manager secrets mounted as files: Cloud Run gives every secret volume a
  # directory of its own, so each file lives in a separate one.
  function_env = {
    ETCD_ENDPOINTS     = local.etcd_client_urls # every etcd member
    ETCD_CACERT        = "/etc/secrets/etcd-ca/ca.pem"
    ETCD_CERT          = "/etc/secrets/etcd-cert/client.pem"
    ETCD_KEY           = "/etc/secrets/etcd-key/client-key.pem"
    ETCD_USERNAME      = var.etcd_gateway_user
    TRUSTED_PROXY_HOPS = "1" # Google's front end is the one proxy in front of the function
    CONFIG_SERVICE     = "api-gateway"
    LOG_LEVEL          = var.log_level
    PROCESSOR_URL      = local.processor_url
  }

  # Set only when given; otherwise the function's own defaults apply.
  function_optional_env = {
    CONFIG_INITIAL_WAIT_SECONDS = var.config_initial_wait_seconds
    CONFIG_STALENESS_SECONDS    = var.config_staleness_seconds
  }
}

resource "google_service_account" "function" {
  account_id   = "${var.function_name}-fn"
  display_name = "Cloud Function ${var.function_name} (runtime identity)"

  depends_on = [google_project_service.required]
}

resource "google_project_iam_member" "function_log_writer" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = "serviceAccount:${google_service_account.function.email}"
}

resource "google_storage_bucket" "source" {
  #checkov:skip=CKV_GCP_62:Holds only the function's source archives, named by content hash; Cloud Audit Logs record access, and a usage-log bucket would need the same rules again.
  name                        = "${var.project_id}-${var.function_name}-source"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true
  labels                      = local.labels

  # An archive deleted or replaced by mistake stays recoverable for a week.
  versioning {
    enabled = true
  }

  # Old source archives are only needed for a rollback; keep a month of them.
  lifecycle_rule {
    condition {
      age = 30
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.required]
}

data "archive_file" "source" {
  type        = "zip"
  output_path = "${path.module}/.terraform/function-source.zip"

  dynamic "source" {
    for_each = local.source_files
    content {
      content  = file("${local.source_dir}/${source.value}")
      filename = source.value
    }
  }
}

resource "google_storage_bucket_object" "source" {
  # Named by content hash: a code change is a new object, which redeploys the function.
  name   = "function-source-${data.archive_file.source.output_sha256}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.source.output_path
}

resource "google_cloudfunctions2_function" "gateway" {
  #checkov:skip=CKV_GCP_124:The gateway is the public API entry point; callers are checked by IAM (roles/run.invoker) unless allow_unauthenticated is set. Behind a load balancer, ALLOW_INTERNAL_AND_GCLB would be the tighter choice.
  name        = var.function_name
  location    = var.region
  description = "HTTP API gateway with live configuration from etcd"
  labels      = local.labels

  build_config {
    runtime     = var.runtime
    entry_point = "api_gateway"

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    # One warm instance keeps its etcd watch (and its snapshot) between requests.
    min_instance_count               = var.min_instances
    max_instance_count               = var.max_instances
    max_instance_request_concurrency = var.concurrency
    available_cpu                    = var.function_cpu
    available_memory                 = var.function_memory
    timeout_seconds                  = var.timeout_seconds
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.function.email

    vpc_connector                 = google_vpc_access_connector.config.id
    vpc_connector_egress_settings = var.egress_settings

    environment_variables = merge(
      local.function_env,
      { for name, value in local.function_optional_env : name => tostring(value) if value != null },
    )

    secret_environment_variables {
      key        = "ETCD_PASSWORD"
      project_id = data.google_project.this.number
      secret     = google_secret_manager_secret.etcd["gateway-password"].secret_id
      version    = "latest"
    }

    # The bearer token the processor requires (processor.tf).
    secret_environment_variables {
      key        = "PROCESSOR_TOKEN"
      project_id = data.google_project.this.number
      secret     = google_secret_manager_secret.processor_token.secret_id
      version    = "latest"
    }

    secret_volumes {
      mount_path = "/etc/secrets/etcd-ca"
      project_id = data.google_project.this.number
      secret     = google_secret_manager_secret.etcd["ca-cert"].secret_id
      versions {
        version = "latest"
        path    = "ca.pem"
      }
    }

    secret_volumes {
      mount_path = "/etc/secrets/etcd-cert"
      project_id = data.google_project.this.number
      secret     = google_secret_manager_secret.etcd["gateway-cert"].secret_id
      versions {
        version = "latest"
        path    = "client.pem"
      }
    }

    secret_volumes {
      mount_path = "/etc/secrets/etcd-key"
      project_id = data.google_project.this.number
      secret     = google_secret_manager_secret.etcd["gateway-key"].secret_id
      versions {
        version = "latest"
        path    = "client-key.pem"
      }
    }
  }

  lifecycle {
    precondition {
      # Cloud Run allows concurrency above 1, and CPU outside requests, only with at
      # least one whole vCPU.
      condition     = tonumber(var.function_cpu) >= 1 || (var.concurrency == 1 && !var.cpu_always_allocated)
      error_message = "function_cpu must be at least 1 when concurrency > 1 or cpu_always_allocated is true."
    }
    precondition {
      condition     = var.min_instances <= var.max_instances
      error_message = "min_instances must not exceed max_instances."
    }
  }

  depends_on = [
    google_project_service.required,
    google_secret_manager_secret_version.etcd,
    google_secret_manager_secret_iam_member.function,
    google_secret_manager_secret_iam_member.processor_token,
  ]
}

# Who may call the function. Authenticated by default; allUsers only when asked.
resource "google_cloud_run_service_iam_member" "invoker" {
  for_each = toset(concat(var.invoker_members, var.allow_unauthenticated ? ["allUsers"] : []))

  project  = var.project_id
  location = var.region
  service  = google_cloudfunctions2_function.gateway.name
  role     = "roles/run.invoker"
  member   = each.value
}

# CPU outside requests is a setting of the underlying Cloud Run service that the
# functions API does not expose, so it is applied with gcloud after every function
# update (needs gcloud where Terraform runs). Trade-off: README.md ("Deploy").
resource "terraform_data" "cpu_always_allocated" {
  count = var.cpu_always_allocated ? 1 : 0

  triggers_replace = [google_cloudfunctions2_function.gateway.update_time]

  provisioner "local-exec" {
    command = join(" ", [
      "gcloud run services update", google_cloudfunctions2_function.gateway.name,
      "--project=${var.project_id}", "--region=${var.region}",
      "--no-cpu-throttling", "--quiet",
    ])
  }
}
