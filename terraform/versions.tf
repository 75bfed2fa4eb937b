terraform {
  # terraform_data (cpu_always_allocated) needs 1.4; optional() attributes 1.3.
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.40, < 8.0"
    }
    tls = {
      source  = "hashicorp/tls"
      version = ">= 4.0, < 5.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.5, < 4.0"
    }
    archive = {
      # output_sha256 on archive_file arrived in 2.4.
      source  = "hashicorp/archive"
      version = ">= 2.4, < 3.0"
    }
  }
}
