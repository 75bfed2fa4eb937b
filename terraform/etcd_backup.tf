# Scheduled etcd snapshots: every member has a systemd timer (etcd_backup_interval);
# at each tick the member that is the raft leader takes `etcdctl snapshot save` and
# uploads it here (templates/etcd-backup.sh). The uploader is a service account that can
# only create objects in this bucket; the VMs act as it for the upload and nothing else.

resource "google_storage_bucket" "etcd_backups" {
  #checkov:skip=CKV_GCP_62:Access to backups is recorded by Cloud Audit Logs (enable Data Access logs for storage); a usage-log bucket would itself need logging, versioning and retention rules.
  name                        = "${var.project_id}-${var.etcd_instance_name}-backups"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  # Backups outlive `terraform destroy` unless the bucket is emptied first.
  force_destroy = false
  labels        = local.labels

  # A replaced or deleted object stays recoverable as a noncurrent version.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = var.etcd_backup_retention_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.etcd_backup_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.required]
}

resource "google_service_account" "etcd_backup" {
  account_id   = "${var.etcd_instance_name}-bk"
  display_name = "etcd backup uploader (${var.etcd_instance_name})"

  depends_on = [google_project_service.required]
}

# Create objects only: no read, list, overwrite or delete (an overwrite needs delete).
resource "google_storage_bucket_iam_member" "etcd_backup_writer" {
  bucket = google_storage_bucket.etcd_backups.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.etcd_backup.email}"
}

# The etcd VMs mint short-lived tokens for the uploader (gcloud
# --impersonate-service-account); their own identity gets no storage rights.
resource "google_service_account_iam_member" "etcd_vm_uploads_backups" {
  service_account_id = google_service_account.etcd_backup.name
  role               = "roles/iam.serviceAccountTokenCreator"
  member             = "serviceAccount:${google_service_account.etcd.email}"
}
