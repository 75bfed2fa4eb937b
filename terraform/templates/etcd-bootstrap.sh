#!/usr/bin/env bash
# Creates etcd's roles and users for the config key space, then turns authentication
# on. Idempotent: the etcd VM runs it at every boot (the startup script embeds this
# file verbatim), and tests/deploy runs this same file against a local etcd.
#
# Environment:
#   ETCDCTL_ENDPOINTS, ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY   etcdctl's own
#       settings; the certificate must be root's (CN=root): once auth is on, etcd
#       takes the certificate's CN as the user.
#   ETCD_ROOT_PASSWORD, ETCD_GATEWAY_PASSWORD, ETCD_OPERATOR_PASSWORD   set when a
#       user is created; an existing user's password is left alone (see README.md ("Deploy")
#       for rotation).
#   ETCD_GATEWAY_USER (gateway), ETCD_OPERATOR_USER (operator), CONFIG_PREFIX (/config/),
#   ETCDCTL (etcdctl): optional.
#   ETCD_PROCESSOR_PASSWORD: when set, the data processor's user (ETCD_PROCESSOR_USER,
#       processor) is made too, read-only, on the range its watcher lists.
set -euo pipefail

: "${ETCDCTL_ENDPOINTS:?ETCDCTL_ENDPOINTS is required}"
: "${ETCDCTL_CACERT:?ETCDCTL_CACERT is required}"
: "${ETCDCTL_CERT:?ETCDCTL_CERT is required (root client certificate)}"
: "${ETCDCTL_KEY:?ETCDCTL_KEY is required (root client key)}"
: "${ETCD_ROOT_PASSWORD:?ETCD_ROOT_PASSWORD is required}"
: "${ETCD_GATEWAY_PASSWORD:?ETCD_GATEWAY_PASSWORD is required}"
: "${ETCD_OPERATOR_PASSWORD:?ETCD_OPERATOR_PASSWORD is required}"
ETCDCTL="${ETCDCTL:-etcdctl}"
GATEWAY_USER="${ETCD_GATEWAY_USER:-gateway}"
OPERATOR_USER="${ETCD_OPERATOR_USER:-operator}"
CONFIG_PREFIX="${CONFIG_PREFIX:-/config/}"
# The function reads the key space; operators change it.
READER_ROLE=config-reader
OPERATOR_ROLE=config-operator
export ETCDCTL_API=3 ETCDCTL_ENDPOINTS ETCDCTL_CACERT ETCDCTL_CERT ETCDCTL_KEY

log() { echo "etcd-bootstrap: $*"; }
ctl() { "$ETCDCTL" --dial-timeout=5s --command-timeout=10s "$@"; }

# `role list` and `user list` print one name per line. Output is captured before
# matching: `grep -q` would stop reading early, and under pipefail etcdctl's SIGPIPE
# would turn a match into a failure.
has_line() { # text line
  local line
  while IFS= read -r line; do
    [ "$line" = "$2" ] && return 0
  done <<<"$1"
  return 1
}
has_role() { has_line "$(ctl role list)" "$1"; }
has_user() { has_line "$(ctl user list)" "$1"; }

ensure_role() {
  if ! has_role "$1"; then
    ctl role add "$1" >/dev/null
    log "created role $1"
  fi
}

ensure_user() { # name password role
  if ! has_user "$1"; then
    # The password goes through stdin, never argv (other local users can read argv).
    printf '%s\n' "$2" | ctl user add "$1" --interactive=false >/dev/null
    log "created user $1"
  fi
  # `user get` prints "User: <name>" and "Roles: <role> <role> ...".
  local roles
  roles="$(ctl user get "$1" | sed -n 's/^Roles: *//p' | tr ' ' '\n')"
  if ! has_line "$roles" "$3"; then
    ctl user grant-role "$1" "$3" >/dev/null
    log "granted role $3 to user $1"
  fi
}

case "$CONFIG_PREFIX" in
  /*/) ;;
  *) echo "etcd-bootstrap: CONFIG_PREFIX must start and end with '/', got '$CONFIG_PREFIX'" >&2; exit 2 ;;
esac

# etcd refuses `auth enable` unless user root holds role root.
ensure_role root
ensure_user root "$ETCD_ROOT_PASSWORD" root

ensure_role "$READER_ROLE"
ctl role grant-permission "$READER_ROLE" read "$CONFIG_PREFIX" --prefix=true >/dev/null
ensure_role "$OPERATOR_ROLE"
ctl role grant-permission "$OPERATOR_ROLE" readwrite "$CONFIG_PREFIX" --prefix=true >/dev/null
# The operator tool's audit trail (a fixed prefix: the tool writes there, in the same
# transaction as each change). Only operators may touch it; no service role can.
ctl role grant-permission "$OPERATOR_ROLE" readwrite /audit/ --prefix=true >/dev/null

ensure_user "$GATEWAY_USER" "$ETCD_GATEWAY_PASSWORD" "$READER_ROLE"
ensure_user "$OPERATOR_USER" "$ETCD_OPERATOR_PASSWORD" "$OPERATOR_ROLE"

# Each serving gateway process registers itself (a lease-bound record, for the fleet-wide
# rate limit) under its service's prefix: the function may write there and nowhere else.
MEMBER_ROLE=gateway-member
INSTANCES_PREFIX=/instances/api-gateway/
ensure_role "$MEMBER_ROLE"
ctl role grant-permission "$MEMBER_ROLE" readwrite "$INSTANCES_PREFIX" --prefix=true >/dev/null
ensure_user "$GATEWAY_USER" "$ETCD_GATEWAY_PASSWORD" "$MEMBER_ROLE"

# The data processor reads exactly what its watcher reads: one key range from
# <prefix>global/ to the end of <prefix>services/data-processor/ (one range, so one
# watch delivers a transaction over both prefixes whole; README.md, "Deploy").
if [ -n "${ETCD_PROCESSOR_PASSWORD:-}" ]; then
  PROCESSOR_ROLE=processor-reader
  ensure_role "$PROCESSOR_ROLE"
  # [from, to): "0" is the byte after "/", so `to` ends the data-processor/ prefix.
  ctl role grant-permission "$PROCESSOR_ROLE" read \
    "${CONFIG_PREFIX}global/" "${CONFIG_PREFIX}services/data-processor0" >/dev/null
  ensure_user "${ETCD_PROCESSOR_USER:-processor}" "$ETCD_PROCESSOR_PASSWORD" "$PROCESSOR_ROLE"
fi

if has_line "$(ctl auth status)" "Authentication Status: true"; then
  log "authentication already enabled"
else
  ctl auth enable >/dev/null
  log "authentication enabled"
fi
