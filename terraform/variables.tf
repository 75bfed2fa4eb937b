variable "project_id" {
  type        = string
  description = "ID of the Google Cloud project to deploy into."
}

variable "region" {
  type        = string
  description = "Region of the function, the VPC connector, the subnet and the source bucket."
  default     = "us-central1"
}

variable "zone" {
  type        = string
  description = "Zone of the etcd VM and its data disk. Null means \"<region>-b\"."
  default     = null
}

variable "name" {
  type        = string
  description = "Prefix for the network, firewall, router and NAT names, and the certificates' organization."
  default     = "api-gateway-config"
}

variable "labels" {
  type        = map(string)
  description = "Extra labels for the resources that take labels."
  default     = {}
}

variable "enable_apis" {
  type        = bool
  description = "Enable the Google APIs this configuration uses. Turn off when a platform team manages APIs."
  default     = true
}

# --- network -------------------------------------------------------------------------

variable "network" {
  type        = string
  description = "Self link of an existing VPC network to use. Null creates one."
  default     = null
}

variable "subnetwork" {
  type        = string
  description = "Self link of an existing subnet (in `region`, on `network`) for the etcd VM. Null creates one."
  default     = null
}

variable "subnet_cidr" {
  type        = string
  description = "Range of the subnet created for the etcd VM (ignored when `subnetwork` is given)."
  default     = "10.10.0.0/24"

  validation {
    condition     = can(cidrhost(var.subnet_cidr, 0))
    error_message = "subnet_cidr must be an IPv4 CIDR range."
  }
}

variable "connector_name" {
  type        = string
  description = "Name of the Serverless VPC Access connector (the function's egress path to etcd)."
  default     = "etcd-connector"

  validation {
    condition     = can(regex("^[a-z][-a-z0-9]{0,23}[a-z0-9]$", var.connector_name))
    error_message = "connector_name: 2-25 characters, lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "connector_cidr" {
  type        = string
  description = "Unused /28 range for the VPC connector. The firewall admits etcd's port from this range only."
  default     = "10.8.0.0/28"

  validation {
    condition     = can(cidrhost(var.connector_cidr, 0)) && endswith(var.connector_cidr, "/28")
    error_message = "connector_cidr must be an IPv4 /28 range."
  }
}

variable "connector_machine_type" {
  type        = string
  description = "Machine type of the connector's instances (f1-micro, e2-micro or e2-standard-4)."
  default     = "e2-micro"
}

variable "connector_min_instances" {
  type        = number
  description = "Minimum connector instances (at least 2; they run, and cost, all the time)."
  default     = 2
}

variable "connector_max_instances" {
  type        = number
  description = "Maximum connector instances (at most 10, more than the minimum)."
  default     = 3
}

variable "create_nat" {
  type        = bool
  description = "Create a Cloud Router and NAT so the VM (no external IP) can download etcd. Turn off if the network already has NAT."
  default     = true
}

# --- etcd VM -------------------------------------------------------------------------

variable "etcd_instance_name" {
  type        = string
  description = "Name of the etcd VM; also the prefix of its disk, address, service account and secrets."
  default     = "etcd-config"

  validation {
    condition     = can(regex("^[a-z][-a-z0-9]{2,24}$", var.etcd_instance_name))
    error_message = "etcd_instance_name: 3-25 characters, lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "etcd_version" {
  type        = string
  description = "etcd release installed on the VM (a tag of github.com/etcd-io/etcd)."
  default     = "v3.5.27"

  validation {
    condition     = can(regex("^v3\\.[56]\\.[0-9]+$", var.etcd_version))
    error_message = "etcd_version must be a v3.5.x or v3.6.x release tag, e.g. v3.5.27."
  }
}

variable "etcd_sha256" {
  type        = string
  description = "SHA-256 of etcd-<version>-linux-amd64.tar.gz (from the release's SHA256SUMS). The VM refuses a tarball that differs."
  default     = "0aad9a9e4e0817a021e933f9806a2b2960a62f949ad5a3d6436d8886945cb1bc"

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.etcd_sha256))
    error_message = "etcd_sha256 must be 64 lowercase hex digits."
  }
}

variable "etcd_machine_type" {
  type        = string
  description = "Machine type of the etcd VM. etcd wants 2 GB of memory or more."
  default     = "e2-small"
}

variable "etcd_image" {
  type        = string
  description = "Boot image of the etcd VM (needs systemd, curl and the gcloud CLI, as Google's Debian images have)."
  default     = "debian-cloud/debian-12"
}

variable "etcd_disk_type" {
  type        = string
  description = "Type of the persistent disk holding etcd's data."
  default     = "pd-balanced"
}

variable "etcd_disk_size_gb" {
  type        = number
  description = "Size of etcd's data disk in GB."
  default     = 10
}

variable "etcd_private_ip" {
  type        = string
  description = "Private address for the (first) etcd VM inside the subnet. Null lets Google pick one (it is reserved either way); other members always get one picked."
  default     = null
}

variable "etcd_auto_compaction_retention" {
  type        = string
  description = "History etcd keeps before periodic compaction (etcd duration, e.g. 24h). A watcher away for less resumes without relisting."
  default     = "24h"

  validation {
    condition     = can(regex("^[0-9]+(h|m|s)$", var.etcd_auto_compaction_retention))
    error_message = "etcd_auto_compaction_retention must look like 24h, 30m or 3600s."
  }
}

variable "etcd_cluster_size" {
  type        = number
  description = "etcd members: 1 (one VM) or 3 (three VMs in three zones; survives the loss of one). Fixed at creation: changing it means a new cluster restored from a backup."
  default     = 1

  validation {
    condition     = contains([1, 3], var.etcd_cluster_size)
    error_message = "etcd_cluster_size must be 1 or 3."
  }
}

variable "etcd_zones" {
  type        = list(string)
  description = "Zones of the etcd members, member i in zone i. Empty means `zone` for one member and the region's first three zones for three."
  default     = []

  validation {
    condition     = length(var.etcd_zones) == 0 || length(var.etcd_zones) == length(distinct(var.etcd_zones))
    error_message = "etcd_zones must not repeat a zone."
  }
}

variable "etcd_backup_interval" {
  type        = string
  description = "When the etcd backup timer fires, as a systemd OnCalendar expression (hourly, daily, *:0/15, ...)."
  default     = "hourly"

  validation {
    condition     = can(regex("^[-*:/,. 0-9A-Za-z]+$", var.etcd_backup_interval))
    error_message = "etcd_backup_interval must be a systemd calendar expression such as hourly or *:0/15."
  }
}

variable "etcd_backup_retention_days" {
  type        = number
  description = "Days a backup (and a replaced version of one) is kept in the backup bucket before deletion."
  default     = 30

  validation {
    condition     = var.etcd_backup_retention_days >= 1 && floor(var.etcd_backup_retention_days) == var.etcd_backup_retention_days
    error_message = "etcd_backup_retention_days must be a whole number >= 1."
  }
}

variable "etcd_gateway_user" {
  type        = string
  description = "etcd user of the function (read-only on /config/); also its client certificate's CN."
  default     = "gateway"
}

variable "etcd_operator_user" {
  type        = string
  description = "etcd user of operators (read-write on /config/); also its client certificate's CN."
  default     = "operator"
}

variable "operator_members" {
  type        = list(string)
  description = "IAM members (e.g. group:sre@example.com) allowed to SSH to the etcd VM through IAP and run etcdctl-operator."
  default     = []
}

variable "deletion_protection" {
  type        = bool
  description = "Protect the etcd VM from deletion."
  default     = false
}

variable "ca_validity_hours" {
  type        = number
  description = "Lifetime of the etcd CA certificate, in hours."
  default     = 43800 # 5 years
}

variable "cert_validity_hours" {
  type        = number
  description = "Lifetime of etcd's server and client certificates, in hours."
  default     = 17520 # 2 years
}

variable "cert_early_renewal_hours" {
  type        = number
  description = "Terraform re-issues a certificate this many hours before it expires (a plan/apply is needed)."
  default     = 720
}

# --- function ------------------------------------------------------------------------

variable "function_name" {
  type        = string
  description = "Name of the Cloud Function (and of its Cloud Run service)."
  default     = "api-gateway"

  validation {
    condition     = can(regex("^[a-z][-a-z0-9]{2,24}[a-z0-9]$", var.function_name))
    error_message = "function_name: 4-26 characters, lowercase letters, digits and hyphens (the service account id adds \"-fn\")."
  }
}

variable "runtime" {
  type        = string
  description = "Python runtime of the function."
  default     = "python312"
}

variable "source_dir" {
  type        = string
  description = "Directory holding main.py, requirements.txt, config_watch/ and gateway/. Null means the repository root."
  default     = null
}

variable "min_instances" {
  type        = number
  description = "Instances kept warm; one keeps its etcd watch and snapshot between requests."
  default     = 1

  validation {
    condition     = var.min_instances >= 0 && floor(var.min_instances) == var.min_instances
    error_message = "min_instances must be a whole number >= 0."
  }
}

variable "max_instances" {
  type        = number
  description = "Upper bound on instances (each holds one etcd watch)."
  default     = 10

  validation {
    condition     = var.max_instances >= 1 && floor(var.max_instances) == var.max_instances
    error_message = "max_instances must be a whole number >= 1."
  }
}

variable "concurrency" {
  type        = number
  description = "Requests one instance serves at once. Above 1 needs function_cpu >= 1."
  default     = 80

  validation {
    condition     = var.concurrency >= 1 && var.concurrency <= 1000
    error_message = "concurrency must be between 1 and 1000."
  }
}

variable "function_cpu" {
  type        = string
  description = "vCPUs per instance, as Cloud Run takes it (\"1\", \"2\", \"0.5\")."
  default     = "1"
}

variable "function_memory" {
  type        = string
  description = "Memory per instance (e.g. 512Mi, 1Gi)."
  default     = "512Mi"
}

variable "timeout_seconds" {
  type        = number
  description = "Request timeout of the function, in seconds."
  default     = 60
}

variable "egress_settings" {
  type        = string
  description = "Traffic sent through the VPC connector: PRIVATE_RANGES_ONLY (etcd only) or ALL_TRAFFIC."
  default     = "PRIVATE_RANGES_ONLY"

  validation {
    condition     = contains(["PRIVATE_RANGES_ONLY", "ALL_TRAFFIC"], var.egress_settings)
    error_message = "egress_settings must be PRIVATE_RANGES_ONLY or ALL_TRAFFIC."
  }
}

variable "cpu_always_allocated" {
  type        = bool
  description = "Keep CPU allocated between requests so the etcd watch runs all the time (instance-based billing; needs function_cpu >= 1 and gcloud where Terraform runs)."
  default     = false
}

variable "allow_unauthenticated" {
  type        = bool
  description = "Let anyone on the internet call the function (grants roles/run.invoker to allUsers)."
  default     = false
}

variable "invoker_members" {
  type        = list(string)
  description = "IAM members allowed to call the function (roles/run.invoker), e.g. serviceAccount:client@p.iam.gserviceaccount.com."
  default     = []
}

variable "log_level" {
  type        = string
  description = "LOG_LEVEL of the function."
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "log_level must be DEBUG, INFO, WARNING or ERROR."
  }
}

variable "config_initial_wait_seconds" {
  type        = number
  description = "CONFIG_INITIAL_WAIT_SECONDS: how long a cold start waits for the first etcd list. Null keeps the function's default."
  default     = null
}

variable "config_staleness_seconds" {
  type        = number
  description = "CONFIG_STALENESS_SECONDS: snapshot age after which a request checks etcd's revision first. Null keeps the function's default."
  default     = null
}

# --- the data processor (processor.tf) ---------------------------------------------------

variable "processor_instance_name" {
  type        = string
  description = "Name of the data processor VM (also prefixes its service account, address and token secret)."
  default     = "data-processor"
}

variable "processor_machine_type" {
  type        = string
  description = "Machine type of the processor VM. Its pool's threads run on these cores: 2 vCPUs or more."
  default     = "e2-standard-2"
}

variable "processor_image" {
  type        = string
  description = "Boot image of the processor VM (needs systemd, Python 3.11+, and the gcloud CLI, as Google's Debian 12 image has)."
  default     = "debian-cloud/debian-12"
}

variable "processor_private_ip" {
  type        = string
  description = "Fixed private address of the processor VM; null picks a free one in the subnet."
  default     = null
}

variable "processor_port" {
  type        = number
  description = "PROCESSOR_PORT: the processor's HTTP port, the only one the function's egress range may reach."
  default     = 8081

  validation {
    condition     = var.processor_port >= 1024 && var.processor_port <= 65535 && floor(var.processor_port) == var.processor_port
    error_message = "processor_port must be an integer from 1024 to 65535 (the service runs unprivileged)."
  }
}

variable "processor_drain_seconds" {
  type        = number
  description = "PROCESSOR_DRAIN_SECONDS: how long a stop waits for accepted jobs; systemd waits 15 s more before killing."
  default     = 30

  validation {
    condition     = var.processor_drain_seconds >= 0 && var.processor_drain_seconds <= 3600 && floor(var.processor_drain_seconds) == var.processor_drain_seconds
    error_message = "processor_drain_seconds must be an integer from 0 to 3600."
  }
}
