#!/usr/bin/env bash
# Deploys the API gateway as a gen2 Cloud Function that reaches etcd over a private
# VPC path with TLS client certificates and credentials from Secret Manager.
# `./deploy.sh --help` lists the settings; README.md ("Deploy") explains them.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROG="${0##*/}"

usage() {
  cat <<'EOF'
Usage: deploy.sh [options]

Deploys the api_gateway function (Cloud Functions gen2, HTTP trigger) from this
repository. Each setting comes from a flag, else from the environment variable
named beside it, else from the default.

  --project ID               PROJECT_ID           default: gcloud config get-value project
  --region REGION            REGION               required, e.g. us-central1
  --function NAME            FUNCTION_NAME        default: api-gateway
  --etcd-endpoints LIST      ETCD_ENDPOINTS       required: host:port or https://host:port, comma-separated
  --service-account EMAIL    SERVICE_ACCOUNT      default: <function>-fn@<project>.iam.gserviceaccount.com
  --vpc-connector NAME       VPC_CONNECTOR        default: etcd-connector (name or projects/.../connectors/...)
  --egress MODE              EGRESS_SETTINGS      private-ranges-only (default) | all
  --min-instances N          MIN_INSTANCES        default: 1 (a warm instance keeps its etcd watch)
  --max-instances N          MAX_INSTANCES        default: 10
  --concurrency N            CONCURRENCY          default: 80 (above 1 needs --cpu >= 1)
  --cpu N                    FUNCTION_CPU         default: 1
  --memory SIZE              FUNCTION_MEMORY      default: 512Mi
  --timeout DURATION         FUNCTION_TIMEOUT     default: 60s
  --runtime RUNTIME          RUNTIME              default: python312
  --etcd-username NAME       ETCD_USERNAME        default: gateway
  --ca-secret SECRET[:VER]        ETCD_CA_SECRET        default: etcd-config-ca-cert
  --cert-secret SECRET[:VER]      ETCD_CERT_SECRET      default: etcd-config-gateway-cert
  --key-secret SECRET[:VER]       ETCD_KEY_SECRET       default: etcd-config-gateway-key
  --password-secret SECRET[:VER]  ETCD_PASSWORD_SECRET  default: etcd-config-gateway-password
  --processor-url URL        PROCESSOR_URL        where /v1/ is forwarded (terraform output processor_url);
                                                  unset: not set, and /v1/ calls answer 502
  --processor-token-secret SECRET[:VER]  PROCESSOR_TOKEN_SECRET  default: data-processor-token
                                                  (sent as PROCESSOR_TOKEN; only with a processor URL)
  --initial-wait SECONDS     CONFIG_INITIAL_WAIT_SECONDS  default: unset (the function's own)
  --staleness SECONDS        CONFIG_STALENESS_SECONDS     default: unset (the function's own)
  --log-level LEVEL          LOG_LEVEL            DEBUG | INFO (default) | WARNING | ERROR
  --invoker MEMBER           INVOKERS             may repeat; env: comma-separated. Granted roles/run.invoker
  --cpu-always-allocated     CPU_ALWAYS_ALLOCATED=true   keep CPU between requests (needs --cpu >= 1)
  --allow-unauthenticated    ALLOW_UNAUTHENTICATED=true  public function (default: authenticated only)
  --dry-run                  DRY_RUN=true         print every gcloud command, run none
  -h, --help                 show this help

The etcd TLS material and password come from Secret Manager (--set-secrets): the
certificate and key are mounted as files, the password is a secret environment
variable. Terraform (terraform/) creates the secrets, the connector and the
service account under the default names above.
EOF
}

die() {
  echo "$PROG: error: $*" >&2
  exit 2
}

# --- settings: flags, then environment, then defaults ---------------------------------

PROJECT_ID="${PROJECT_ID:-}"
REGION="${REGION:-}"
FUNCTION_NAME="${FUNCTION_NAME:-api-gateway}"
ETCD_ENDPOINTS="${ETCD_ENDPOINTS:-}"
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-}"
VPC_CONNECTOR="${VPC_CONNECTOR:-etcd-connector}"
EGRESS_SETTINGS="${EGRESS_SETTINGS:-private-ranges-only}"
MIN_INSTANCES="${MIN_INSTANCES:-1}"
MAX_INSTANCES="${MAX_INSTANCES:-10}"
CONCURRENCY="${CONCURRENCY:-80}"
FUNCTION_CPU="${FUNCTION_CPU:-1}"
FUNCTION_MEMORY="${FUNCTION_MEMORY:-512Mi}"
FUNCTION_TIMEOUT="${FUNCTION_TIMEOUT:-60s}"
RUNTIME="${RUNTIME:-python312}"
ETCD_USERNAME="${ETCD_USERNAME:-gateway}"
ETCD_CA_SECRET="${ETCD_CA_SECRET:-etcd-config-ca-cert}"
ETCD_CERT_SECRET="${ETCD_CERT_SECRET:-etcd-config-gateway-cert}"
ETCD_KEY_SECRET="${ETCD_KEY_SECRET:-etcd-config-gateway-key}"
ETCD_PASSWORD_SECRET="${ETCD_PASSWORD_SECRET:-etcd-config-gateway-password}"
PROCESSOR_URL="${PROCESSOR_URL:-}"
PROCESSOR_TOKEN_SECRET="${PROCESSOR_TOKEN_SECRET:-data-processor-token}"
CONFIG_INITIAL_WAIT_SECONDS="${CONFIG_INITIAL_WAIT_SECONDS:-}"
CONFIG_STALENESS_SECONDS="${CONFIG_STALENESS_SECONDS:-}"
LOG_LEVEL="${LOG_LEVEL:-INFO}"
INVOKERS="${INVOKERS:-}"
CPU_ALWAYS_ALLOCATED="${CPU_ALWAYS_ALLOCATED:-false}"
ALLOW_UNAUTHENTICATED="${ALLOW_UNAUTHENTICATED:-false}"
DRY_RUN="${DRY_RUN:-false}"

# Where the function finds its secret files. Cloud Run gives every secret volume a
# directory of its own, so each file gets a separate one.
CA_MOUNT=/etc/secrets/etcd-ca
CERT_MOUNT=/etc/secrets/etcd-cert
KEY_MOUNT=/etc/secrets/etcd-key

need_value() { # flag remaining-arg-count
  [ "$2" -ge 2 ] || die "$1 needs a value (see --help)"
}

while [ "$#" -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=true; shift; continue ;;
    --cpu-always-allocated) CPU_ALWAYS_ALLOCATED=true; shift; continue ;;
    --allow-unauthenticated) ALLOW_UNAUTHENTICATED=true; shift; continue ;;
    --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}" ;; # --flag=value -> --flag value
  esac
  case "$1" in
    --project) need_value "$1" "$#"; PROJECT_ID="$2" ;;
    --region) need_value "$1" "$#"; REGION="$2" ;;
    --function) need_value "$1" "$#"; FUNCTION_NAME="$2" ;;
    --etcd-endpoints) need_value "$1" "$#"; ETCD_ENDPOINTS="$2" ;;
    --service-account) need_value "$1" "$#"; SERVICE_ACCOUNT="$2" ;;
    --vpc-connector) need_value "$1" "$#"; VPC_CONNECTOR="$2" ;;
    --egress) need_value "$1" "$#"; EGRESS_SETTINGS="$2" ;;
    --min-instances) need_value "$1" "$#"; MIN_INSTANCES="$2" ;;
    --max-instances) need_value "$1" "$#"; MAX_INSTANCES="$2" ;;
    --concurrency) need_value "$1" "$#"; CONCURRENCY="$2" ;;
    --cpu) need_value "$1" "$#"; FUNCTION_CPU="$2" ;;
    --memory) need_value "$1" "$#"; FUNCTION_MEMORY="$2" ;;
    --timeout) need_value "$1" "$#"; FUNCTION_TIMEOUT="$2" ;;
    --runtime) need_value "$1" "$#"; RUNTIME="$2" ;;
    --etcd-username) need_value "$1" "$#"; ETCD_USERNAME="$2" ;;
    --ca-secret) need_value "$1" "$#"; ETCD_CA_SECRET="$2" ;;
    --cert-secret) need_value "$1" "$#"; ETCD_CERT_SECRET="$2" ;;
    --key-secret) need_value "$1" "$#"; ETCD_KEY_SECRET="$2" ;;
    --password-secret) need_value "$1" "$#"; ETCD_PASSWORD_SECRET="$2" ;;
    --processor-url) need_value "$1" "$#"; PROCESSOR_URL="$2" ;;
    --processor-token-secret) need_value "$1" "$#"; PROCESSOR_TOKEN_SECRET="$2" ;;
    --initial-wait) need_value "$1" "$#"; CONFIG_INITIAL_WAIT_SECONDS="$2" ;;
    --staleness) need_value "$1" "$#"; CONFIG_STALENESS_SECONDS="$2" ;;
    --log-level) need_value "$1" "$#"; LOG_LEVEL="$2" ;;
    --invoker) need_value "$1" "$#"; INVOKERS="${INVOKERS:+$INVOKERS,}$2" ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
  shift 2
done

# --- validation: every setting is checked before any gcloud call that changes anything

is_true() {
  case "$2" in
    true | 1 | yes) return 0 ;;
    false | 0 | no | '') return 1 ;;
    *) die "$1 must be true or false, got '$2'" ;;
  esac
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_decimal() { [[ "$1" =~ ^[0-9]+(\.[0-9]+)?$ ]]; }

check_port() { # setting endpoint port
  if ! is_uint "$3" || [ "${#3}" -gt 5 ] || [ "$((10#$3))" -lt 1 ] || [ "$((10#$3))" -gt 65535 ]; then
    die "$1: port of '$2' must be 1-65535"
  fi
}

check_endpoints() {
  [ -n "$ETCD_ENDPOINTS" ] || die "ETCD_ENDPOINTS is required (--etcd-endpoints), e.g. 10.10.0.2:2379"
  local endpoint hostport host port
  local -a endpoints
  IFS=',' read -r -a endpoints <<<"$ETCD_ENDPOINTS"
  [ "${#endpoints[@]}" -gt 0 ] || die "ETCD_ENDPOINTS is empty"
  for endpoint in "${endpoints[@]}"; do
    case "$endpoint" in
      http://*) die "ETCD_ENDPOINTS: '$endpoint' is plain http, but the function always talks TLS to etcd; use host:port or https://host:port" ;;
      https://*) hostport="${endpoint#https://}" ;;
      *://*) die "ETCD_ENDPOINTS: '$endpoint' has an unsupported scheme; use host:port or https://host:port" ;;
      *) hostport="$endpoint" ;;
    esac
    [[ "$hostport" =~ ^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]+)$ ]] ||
      die "ETCD_ENDPOINTS: '$endpoint' is not host:port or https://host:port"
    host="${BASH_REMATCH[1]}"
    port="${BASH_REMATCH[3]}"
    check_port ETCD_ENDPOINTS "$endpoint" "$port"
    [ -n "$host" ] || die "ETCD_ENDPOINTS: '$endpoint' has no host"
  done
}

check_secret() { # setting value
  [[ "$2" =~ ^[A-Za-z0-9_-]{1,255}(:([1-9][0-9]*|latest))?$ ]] ||
    die "$1: '$2' is not SECRET_NAME or SECRET_NAME:VERSION (version a number or 'latest')"
}

secret_ref() { # name[:version] -> name:version
  case "$1" in
    *:*) echo "$1" ;;
    *) echo "$1:latest" ;;
  esac
}

validate() {
  [ -n "$REGION" ] || die "REGION is required (--region), e.g. us-central1"
  [[ "$REGION" =~ ^[a-z]+-[a-z]+[0-9]+$ ]] || die "REGION: '$REGION' is not a region name like us-central1"
  [[ "$PROJECT_ID" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]$ || "$PROJECT_ID" =~ ^[a-z0-9.-]+:[a-z][a-z0-9-]{4,28}[a-z0-9]$ ]] ||
    die "PROJECT_ID: '$PROJECT_ID' is not a project id"
  [[ "$FUNCTION_NAME" =~ ^[a-z][a-z0-9-]{0,47}[a-z0-9]$ ]] ||
    die "FUNCTION_NAME: '$FUNCTION_NAME' must be 2-49 lowercase letters, digits or hyphens, starting with a letter"
  check_endpoints
  [[ "$SERVICE_ACCOUNT" =~ ^[a-z][a-z0-9-]{4,28}[a-z0-9]@[a-z0-9.-]+\.iam\.gserviceaccount\.com$ ]] ||
    die "SERVICE_ACCOUNT: '$SERVICE_ACCOUNT' is not a service account email (name@project.iam.gserviceaccount.com)"
  [[ "$VPC_CONNECTOR" =~ ^([a-z][-a-z0-9]{0,23}[a-z0-9]|projects/[^/]+/locations/[^/]+/connectors/[a-z][-a-z0-9]{0,23}[a-z0-9])$ ]] ||
    die "VPC_CONNECTOR: '$VPC_CONNECTOR' is not a connector name or projects/P/locations/R/connectors/NAME"
  case "$EGRESS_SETTINGS" in
    private-ranges-only | all) ;;
    *) die "EGRESS_SETTINGS must be private-ranges-only or all, got '$EGRESS_SETTINGS'" ;;
  esac
  if ! is_uint "$MIN_INSTANCES" || [ "${#MIN_INSTANCES}" -gt 4 ]; then
    die "MIN_INSTANCES must be a whole number >= 0, got '$MIN_INSTANCES'"
  fi
  if ! is_uint "$MAX_INSTANCES" || [ "${#MAX_INSTANCES}" -gt 4 ] || [ "$((10#$MAX_INSTANCES))" -lt 1 ]; then
    die "MAX_INSTANCES must be a whole number >= 1, got '$MAX_INSTANCES'"
  fi
  [ "$((10#$MIN_INSTANCES))" -le "$((10#$MAX_INSTANCES))" ] ||
    die "MIN_INSTANCES ($MIN_INSTANCES) must not exceed MAX_INSTANCES ($MAX_INSTANCES)"
  if ! is_uint "$CONCURRENCY" || [ "${#CONCURRENCY}" -gt 4 ] ||
    [ "$((10#$CONCURRENCY))" -lt 1 ] || [ "$((10#$CONCURRENCY))" -gt 1000 ]; then
    die "CONCURRENCY must be a whole number from 1 to 1000, got '$CONCURRENCY'"
  fi
  is_decimal "$FUNCTION_CPU" || die "FUNCTION_CPU must be a number of vCPUs like 1 or 0.5, got '$FUNCTION_CPU'"
  local whole_cpu=false
  awk -v c="$FUNCTION_CPU" 'BEGIN { exit !(c >= 1) }' && whole_cpu=true
  if [ "$((10#$CONCURRENCY))" -gt 1 ] && [ "$whole_cpu" = false ]; then
    die "FUNCTION_CPU must be at least 1 when CONCURRENCY > 1 (Cloud Run rule), got '$FUNCTION_CPU'"
  fi
  if is_true CPU_ALWAYS_ALLOCATED "$CPU_ALWAYS_ALLOCATED" && [ "$whole_cpu" = false ]; then
    die "FUNCTION_CPU must be at least 1 for CPU_ALWAYS_ALLOCATED (Cloud Run rule), got '$FUNCTION_CPU'"
  fi
  [[ "$FUNCTION_MEMORY" =~ ^[0-9]+(Mi|Gi|M|G)$ ]] || die "FUNCTION_MEMORY must look like 512Mi or 1Gi, got '$FUNCTION_MEMORY'"
  [[ "$FUNCTION_TIMEOUT" =~ ^[0-9]+s$ ]] || die "FUNCTION_TIMEOUT must look like 60s, got '$FUNCTION_TIMEOUT'"
  [[ "$RUNTIME" =~ ^python3[0-9]+$ ]] || die "RUNTIME must be a Python runtime like python312, got '$RUNTIME'"
  [[ "$ETCD_USERNAME" =~ ^[A-Za-z0-9_.-]+$ ]] || die "ETCD_USERNAME: '$ETCD_USERNAME' is not a plain user name"
  check_secret ETCD_CA_SECRET "$ETCD_CA_SECRET"
  check_secret ETCD_CERT_SECRET "$ETCD_CERT_SECRET"
  check_secret ETCD_KEY_SECRET "$ETCD_KEY_SECRET"
  check_secret ETCD_PASSWORD_SECRET "$ETCD_PASSWORD_SECRET"
  if [ -n "$PROCESSOR_URL" ]; then
    # No ';' (the env list's delimiter below), no spaces; the function checks the rest.
    local url_re='^https?://[^/[:space:];]+(/[^[:space:];]*)?$'
    [[ "$PROCESSOR_URL" =~ $url_re ]] ||
      die "PROCESSOR_URL: '$PROCESSOR_URL' is not http(s)://host[:port][/prefix]"
    check_secret PROCESSOR_TOKEN_SECRET "$PROCESSOR_TOKEN_SECRET"
  fi
  if [ -n "$CONFIG_INITIAL_WAIT_SECONDS" ]; then
    is_decimal "$CONFIG_INITIAL_WAIT_SECONDS" ||
      die "CONFIG_INITIAL_WAIT_SECONDS must be a number of seconds, got '$CONFIG_INITIAL_WAIT_SECONDS'"
  fi
  if [ -n "$CONFIG_STALENESS_SECONDS" ]; then
    is_decimal "$CONFIG_STALENESS_SECONDS" ||
      die "CONFIG_STALENESS_SECONDS must be a number of seconds, got '$CONFIG_STALENESS_SECONDS'"
  fi
  case "$LOG_LEVEL" in
    DEBUG | INFO | WARNING | ERROR) ;;
    *) die "LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got '$LOG_LEVEL'" ;;
  esac
  local member
  local -a members=()
  [ -z "$INVOKERS" ] || IFS=',' read -r -a members <<<"$INVOKERS"
  for member in "${members[@]}"; do
    [[ "$member" =~ ^(user|serviceAccount|group|domain):[^,[:space:]]+$ ]] ||
      die "INVOKERS: '$member' is not an IAM member like serviceAccount:NAME@PROJECT.iam.gserviceaccount.com"
  done
  is_true ALLOW_UNAUTHENTICATED "$ALLOW_UNAUTHENTICATED" || true
  is_true DRY_RUN "$DRY_RUN" || true
}

# --- running gcloud --------------------------------------------------------------------

run() {
  if is_true DRY_RUN "$DRY_RUN"; then
    printf 'DRY-RUN:'
    printf ' %q' "$@"
    printf '\n'
  else
    printf '+' >&2
    printf ' %q' "$@" >&2
    printf '\n' >&2
    "$@"
  fi
}

if [ -z "$PROJECT_ID" ]; then
  if is_true DRY_RUN "$DRY_RUN"; then
    # Runs nothing; shows the lookup a real run would make.
    run gcloud config get-value project
    PROJECT_ID="project-from-gcloud-config"
  else
    PROJECT_ID="$(gcloud config get-value project 2>/dev/null || true)"
    [ -n "$PROJECT_ID" ] ||
      die "PROJECT_ID is not set and 'gcloud config get-value project' gave none; pass --project"
  fi
fi
SERVICE_ACCOUNT="${SERVICE_ACCOUNT:-$FUNCTION_NAME-fn@$PROJECT_ID.iam.gserviceaccount.com}"

validate

env_vars=(
  "ETCD_ENDPOINTS=$ETCD_ENDPOINTS"
  "ETCD_CACERT=$CA_MOUNT/ca.pem"
  "ETCD_CERT=$CERT_MOUNT/client.pem"
  "ETCD_KEY=$KEY_MOUNT/client-key.pem"
  "ETCD_USERNAME=$ETCD_USERNAME"
  "TRUSTED_PROXY_HOPS=1" # Google's front end is the one proxy in front of the function
  "CONFIG_SERVICE=api-gateway"
  "LOG_LEVEL=$LOG_LEVEL"
)
[ -z "$CONFIG_INITIAL_WAIT_SECONDS" ] || env_vars+=("CONFIG_INITIAL_WAIT_SECONDS=$CONFIG_INITIAL_WAIT_SECONDS")
[ -z "$CONFIG_STALENESS_SECONDS" ] || env_vars+=("CONFIG_STALENESS_SECONDS=$CONFIG_STALENESS_SECONDS")

secrets=(
  "$CA_MOUNT/ca.pem=$(secret_ref "$ETCD_CA_SECRET")"
  "$CERT_MOUNT/client.pem=$(secret_ref "$ETCD_CERT_SECRET")"
  "$KEY_MOUNT/client-key.pem=$(secret_ref "$ETCD_KEY_SECRET")"
  "ETCD_PASSWORD=$(secret_ref "$ETCD_PASSWORD_SECRET")"
)
# The processor's address and token, as Terraform gives them to the function: a
# redeploy without them would send every /v1/ call nowhere.
if [ -n "$PROCESSOR_URL" ]; then
  env_vars+=("PROCESSOR_URL=$PROCESSOR_URL")
  secrets+=("PROCESSOR_TOKEN=$(secret_ref "$PROCESSOR_TOKEN_SECRET")")
fi

join() { # separator items...
  local sep="$1" out="$2"
  shift 2
  local item
  for item in "$@"; do out="$out$sep$item"; done
  printf '%s' "$out"
}

if is_true ALLOW_UNAUTHENTICATED "$ALLOW_UNAUTHENTICATED"; then
  auth_flag=--allow-unauthenticated
else
  auth_flag=--no-allow-unauthenticated
fi

# ETCD_ENDPOINTS holds commas, so the env var list uses gcloud's alternate delimiter
# syntax (`gcloud topic escaping`): a leading ^;^ makes ';' the separator.
run gcloud functions deploy "$FUNCTION_NAME" \
  --gen2 \
  --project="$PROJECT_ID" \
  --region="$REGION" \
  --runtime="$RUNTIME" \
  --source="$ROOT" \
  --entry-point=api_gateway \
  --trigger-http \
  "$auth_flag" \
  --service-account="$SERVICE_ACCOUNT" \
  --vpc-connector="$VPC_CONNECTOR" \
  --egress-settings="$EGRESS_SETTINGS" \
  --ingress-settings=all \
  --min-instances="$MIN_INSTANCES" \
  --max-instances="$MAX_INSTANCES" \
  --concurrency="$CONCURRENCY" \
  --cpu="$FUNCTION_CPU" \
  --memory="$FUNCTION_MEMORY" \
  --timeout="$FUNCTION_TIMEOUT" \
  --set-env-vars="^;^$(join ';' "${env_vars[@]}")" \
  --set-secrets="$(join ',' "${secrets[@]}")" \
  --quiet

if [ -n "$INVOKERS" ]; then
  IFS=',' read -r -a invoker_list <<<"$INVOKERS"
  for member in "${invoker_list[@]}"; do
    run gcloud functions add-invoker-policy-binding "$FUNCTION_NAME" \
      --project="$PROJECT_ID" --region="$REGION" --member="$member"
  done
fi

if is_true CPU_ALWAYS_ALLOCATED "$CPU_ALWAYS_ALLOCATED"; then
  # Not a functions setting: it belongs to the Cloud Run service underneath, which
  # has the function's name. Applied after every deploy, which may reset it.
  run gcloud run services update "$FUNCTION_NAME" \
    --project="$PROJECT_ID" --region="$REGION" --no-cpu-throttling --quiet
fi

if ! is_true DRY_RUN "$DRY_RUN"; then
  echo "$PROG: deployed $FUNCTION_NAME; smoke test: scripts/smoke.sh \$(gcloud functions describe $FUNCTION_NAME --gen2 --project=$PROJECT_ID --region=$REGION --format='value(serviceConfig.uri)')" >&2
fi
