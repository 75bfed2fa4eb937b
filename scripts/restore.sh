#!/usr/bin/env bash
# Restores an etcd snapshot so that every watcher moves forward.
#
#   restore.sh bump SNAPSHOT OUTPUT --above REVISION [--margin N]
#       Writes OUTPUT: SNAPSHOT's data at a revision above REVISION + N (default 1000),
#       compacted at that revision. Restored from it, etcd's revision is higher than
#       any a client has seen (REVISION), and a watcher resuming from its last revision
#       finds it compacted, so it lists again and takes the restored data: the effect
#       of `etcdutl snapshot restore --bump-revision --mark-compacted`, which etcd 3.5.1
#       lacks. REVISION: the highest revision a client may have seen (see README.md,
#       "Backups and restore").
#   restore.sh install SNAPSHOT [--node-flags FILE]
#   restore.sh install SNAPSHOT --name NAME --data-dir DIR --initial-cluster CLUSTER
#                      --initial-advertise-peer-urls URL [--initial-cluster-token TOKEN]
#       Restores SNAPSHOT into this member's data directory while etcd is stopped; the
#       old directory is kept beside it as DIR.before-restore-<time>. The member's
#       settings come from its node flags (default /etc/etcd/node.flags on the etcd VM)
#       or the options. Every member of a cluster installs the same file.
#
# How `bump` works: it restores SNAPSHOT into a scratch etcd that listens on loopback
# only (no client can see it), writes one throw-away key until the revision is high
# enough (etcd's JSON gateway, many writes per connection), deletes it, compacts at the
# final revision, and saves the result. Needs etcd, etcdctl, etcdutl and curl.
#
# Environment:
#   ETCD, ETCDCTL, ETCDUTL   binaries (default: etcd, etcdctl, etcdutl on PATH).
#   RESTORE_CACERT, RESTORE_SERVER_CERT, RESTORE_SERVER_KEY   TLS of the scratch etcd
#       (default: the etcd VM's /etc/etcd/pki/{ca,server,server-key}.pem).
#   RESTORE_ROOT_CERT, RESTORE_ROOT_KEY   root's client certificate (default: the VM's
#       /etc/etcd/clients/root{,-key}.pem).
#   RESTORE_PORT, RESTORE_PEER_PORT, RESTORE_METRICS_PORT   loopback ports of the
#       scratch etcd (default 12379, 12380, 12381).
#   ETCD_SERVICE   systemd unit that must be stopped before `install` (default etcd;
#       empty skips the check). RESTORE_OWNER   owner of the restored files (default
#       etcd when that user exists).
set -euo pipefail

ETCD="${ETCD:-etcd}"
ETCDCTL="${ETCDCTL:-etcdctl}"
ETCDUTL="${ETCDUTL:-etcdutl}"
CACERT="${RESTORE_CACERT:-/etc/etcd/pki/ca.pem}"
SERVER_CERT="${RESTORE_SERVER_CERT:-/etc/etcd/pki/server.pem}"
SERVER_KEY="${RESTORE_SERVER_KEY:-/etc/etcd/pki/server-key.pem}"
ROOT_CERT="${RESTORE_ROOT_CERT:-/etc/etcd/clients/root.pem}"
ROOT_KEY="${RESTORE_ROOT_KEY:-/etc/etcd/clients/root-key.pem}"
PORT="${RESTORE_PORT:-12379}"
PEER_PORT="${RESTORE_PEER_PORT:-$((PORT + 1))}"
METRICS_PORT="${RESTORE_METRICS_PORT:-$((PORT + 2))}"
# The throw-away key; outside every service's prefix, so no watcher ever sees it.
BUMP_KEY=/restore/revision-bump

log() { echo "restore: $*" >&2; }
die() { echo "restore: $*" >&2; exit 2; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed -e '$d' -e 's/^# \{0,1\}//' >&2; exit 2; }

is_number() { [[ "$1" =~ ^[0-9]+$ ]]; }

check_snapshot() { # file
  [ -f "$1" ] || die "no snapshot file $1"
  # Verifies the snapshot's integrity hash.
  "$ETCDUTL" snapshot status "$1" -w simple >/dev/null || die "$1 is not a valid etcd snapshot"
}

# --- bump --------------------------------------------------------------------------------

# The scratch etcd of `bump` and its directory; stop_scratch runs at exit.
work=""
scratch_pid=""
stop_scratch() {
  if [ -n "$scratch_pid" ]; then
    kill "$scratch_pid" 2>/dev/null || true
    wait "$scratch_pid" 2>/dev/null || true
  fi
  [ -z "$work" ] || rm -rf "$work"
}

scratch_ctl() {
  ETCDCTL_API=3 "$ETCDCTL" --endpoints="https://127.0.0.1:$PORT" --cacert="$CACERT" \
    --cert="$ROOT_CERT" --key="$ROOT_KEY" --dial-timeout=5s --command-timeout=120s "$@"
}

scratch_revision() {
  local line
  while IFS= read -r line; do
    if [[ "$line" =~ ^\"Revision\"\ :\ ([0-9]+)$ ]]; then
      echo "${BASH_REMATCH[1]}"
      return 0
    fi
  done <<<"$(scratch_ctl endpoint status -w fields)"
  die "no revision in etcdctl endpoint status"
}

# `count` writes of BUMP_KEY through the JSON gateway: 16 at a time, each connection
# reused, so etcd batches them (about 2,000 writes a second on one core).
write_bump_key() { # count
  local config="$work/curl.config" i
  {
    # {"key": base64("/restore/revision-bump"), "value": ""}
    echo 'data = "{\"key\":\"L3Jlc3RvcmUvcmV2aXNpb24tYnVtcA==\",\"value\":\"\"}"'
    for ((i = 0; i < $1; i++)); do
      echo "url = \"https://127.0.0.1:$PORT/v3/kv/put\""
      echo 'output = "/dev/null"'
    done
  } >"$config"
  curl --silent --show-error --no-progress-meter --fail --parallel --parallel-max 16 \
    --cacert "$CACERT" --cert "$ROOT_CERT" --key "$ROOT_KEY" --config "$config"
}

bump() {
  [ "$#" -ge 2 ] || usage
  local snapshot="$1" output="$2" above="" margin=1000
  shift 2
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --above) above="${2:-}"; shift 2 ;;
      --margin) margin="${2:-}"; shift 2 ;;
      *) die "bump: unknown option $1" ;;
    esac
  done
  is_number "$above" || die "bump: --above REVISION is required (the highest revision a client may have seen)"
  is_number "$margin" || die "bump: --margin must be a whole number"
  [ ! -e "$output" ] || die "bump: $output exists; not overwriting it"
  check_snapshot "$snapshot"
  local target=$((above + margin + 1))

  work="$(mktemp -d)"
  trap stop_scratch EXIT
  local peer="http://127.0.0.1:$PEER_PORT" metrics="http://127.0.0.1:$METRICS_PORT"
  "$ETCDUTL" snapshot restore "$snapshot" --data-dir "$work/data" --name scratch \
    --initial-cluster "scratch=$peer" --initial-advertise-peer-urls "$peer" >/dev/null 2>&1 ||
    die "bump: etcdutl snapshot restore failed"
  "$ETCD" --name scratch --data-dir "$work/data" \
    --listen-client-urls "https://127.0.0.1:$PORT" --advertise-client-urls "https://127.0.0.1:$PORT" \
    --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" --initial-cluster "scratch=$peer" \
    --listen-metrics-urls "$metrics" --client-cert-auth --trusted-ca-file "$CACERT" \
    --cert-file "$SERVER_CERT" --key-file "$SERVER_KEY" --log-level error >"$work/etcd.log" 2>&1 &
  scratch_pid=$!
  local deadline=$((SECONDS + 60))
  until [[ "$(curl -fsS --max-time 2 "$metrics/health" 2>/dev/null || true)" == *'"health":"true"'* ]]; do
    if ! kill -0 "$scratch_pid" 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; then
      cat "$work/etcd.log" >&2
      die "bump: the scratch etcd did not start (ports $PORT, $PEER_PORT, $METRICS_PORT taken? set RESTORE_PORT)"
    fi
    sleep 0.2
  done

  local before auth_on=0 revision
  before="$(scratch_revision)"
  # etcd's JSON gateway takes no client certificate as a user, so the writes go in with
  # auth off; it is turned on again before the snapshot is saved.
  if [[ "$(scratch_ctl auth status)" == *"Authentication Status: true"* ]]; then
    auth_on=1
    scratch_ctl auth disable >/dev/null
  fi
  if [ "$before" -lt $((target - 1)) ]; then
    log "snapshot revision $before; writing $((target - before)) revisions to pass $above (+$margin)"
    write_bump_key $((target - before - 1))
  fi
  scratch_ctl del "$BUMP_KEY" >/dev/null
  revision="$(scratch_revision)"
  [ "$revision" -gt "$above" ] || die "bump: revision $revision is not above $above"
  # Every watcher resumes from a revision <= $revision: compacted, so it lists again.
  scratch_ctl compaction --physical "$revision" >/dev/null
  scratch_ctl defrag >/dev/null
  [ "$auth_on" = 0 ] || scratch_ctl auth enable >/dev/null
  scratch_ctl snapshot save "$output" >/dev/null 2>&1
  log "wrote $output: revision $revision (snapshot had $before), compacted at $revision"
  echo "$revision"
}

# --- install -------------------------------------------------------------------------------

install_snapshot() {
  [ "$#" -ge 1 ] || usage
  local snapshot="$1" node_flags="" name="" data_dir="" cluster="" peer_urls="" token=""
  shift
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --node-flags) node_flags="${2:-}"; shift 2 ;;
      --name) name="${2:-}"; shift 2 ;;
      --data-dir) data_dir="${2:-}"; shift 2 ;;
      --initial-cluster) cluster="${2:-}"; shift 2 ;;
      --initial-advertise-peer-urls) peer_urls="${2:-}"; shift 2 ;;
      --initial-cluster-token) token="${2:-}"; shift 2 ;;
      *) die "install: unknown option $1" ;;
    esac
  done
  if [ -z "$name$data_dir$cluster$peer_urls" ] && [ -z "$node_flags" ]; then
    node_flags=/etc/etcd/node.flags
  fi
  if [ -n "$node_flags" ]; then
    [ -f "$node_flags" ] || die "install: no node flags file $node_flags"
    local line
    while IFS= read -r line; do
      case "$line" in
        --name=*) name="${line#*=}" ;;
        --data-dir=*) data_dir="${line#*=}" ;;
        --initial-cluster=*) cluster="${line#*=}" ;;
        --initial-advertise-peer-urls=*) peer_urls="${line#*=}" ;;
        --initial-cluster-token=*) token="${line#*=}" ;;
      esac
    done <"$node_flags"
  fi
  [ -n "$name" ] && [ -n "$data_dir" ] && [ -n "$cluster" ] && [ -n "$peer_urls" ] ||
    die "install: need --name, --data-dir, --initial-cluster and --initial-advertise-peer-urls (or --node-flags)"
  local service="${ETCD_SERVICE-etcd}"
  if [ -n "$service" ] && command -v systemctl >/dev/null && systemctl is-active --quiet "$service"; then
    die "install: $service is running; stop it on every member first (systemctl stop $service)"
  fi
  check_snapshot "$snapshot"

  if [ -e "$data_dir" ]; then
    local kept
    kept="$data_dir.before-restore-$(date -u +%Y%m%dT%H%M%SZ)"
    mv "$data_dir" "$kept"
    log "kept the old data directory as $kept"
  fi
  local args=(--name "$name" --data-dir "$data_dir" --initial-cluster "$cluster"
    --initial-advertise-peer-urls "$peer_urls")
  [ -z "$token" ] || args+=(--initial-cluster-token "$token")
  "$ETCDUTL" snapshot restore "$snapshot" "${args[@]}" >/dev/null 2>&1 ||
    die "install: etcdutl snapshot restore failed"
  chmod 0700 "$data_dir"
  local owner="${RESTORE_OWNER-}"
  if [ -z "${RESTORE_OWNER+set}" ] && id etcd >/dev/null 2>&1; then owner=etcd; fi
  [ -z "$owner" ] || chown -R "$owner:$owner" "$data_dir"
  log "restored $snapshot into $data_dir as member $name; start etcd on every member now"
}

case "${1:-}" in
  bump) shift; bump "$@" ;;
  install) shift; install_snapshot "$@" ;;
  *) usage ;;
esac
