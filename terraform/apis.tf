locals {
  # Every API the resources below call. Disabling them on destroy would break
  # anything else in the project that uses them, so destroy leaves them on.
  required_apis = [
    "artifactregistry.googleapis.com", # images Cloud Build makes for the function
    "cloudbuild.googleapis.com",       # builds the function from source
    "cloudfunctions.googleapis.com",
    "compute.googleapis.com",
    "iam.googleapis.com",
    "iamcredentials.googleapis.com", # the etcd VMs act as the backup uploader
    "iap.googleapis.com",            # SSH to the etcd VM through IAP
    "logging.googleapis.com",
    "run.googleapis.com", # gen2 functions run on Cloud Run
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
    "vpcaccess.googleapis.com", # Serverless VPC Access connector
  ]
}

resource "google_project_service" "required" {
  for_each = var.enable_apis ? toset(local.required_apis) : toset([])

  project            = var.project_id
  service            = each.value
  disable_on_destroy = false
}
