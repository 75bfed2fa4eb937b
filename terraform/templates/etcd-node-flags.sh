#!/usr/bin/env bash
# Prints this etcd member's own flags (name, data directory, URLs, initial cluster),
# one per line, for /etc/etcd/node.flags. The etcd VM runs it at every boot (the
# startup script embeds this file verbatim); tests/deploy runs the same file to start
# local members.
#
# The initial cluster state is the one decision here, and it never re-initialises a
# member that has data:
#   - data in DATA_DIR: "existing" (etcd then ignores the initial-cluster flags and
#     rejoins with its own membership; a rebooted member takes this path);
#   - no data, and another member answers and lists this one as never started:
#     "existing" (a replaced member added with `etcdctl member add`, or a member that
#     booted after the other two formed the cluster); any other answer refuses to
#     start, so an empty disk never joins in place of a member that had data;
#   - no data and no member answers: "new" (first boot of the cluster).
#
# Environment:
#   NODE_NAME, PRIVATE_IP, DATA_DIR, INITIAL_CLUSTER (name=https://ip:2380,...),
#   CLUSTER_TOKEN   required.
#   CLUSTER_CLIENT_URLS   every member's client URL (https://ip:2379,...), to ask
#       whether the cluster exists; ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY for that.
#   CLIENT_PORT (2379), PEER_PORT (2380), METRICS_PORT (2381), ETCDCTL (etcdctl).
set -euo pipefail

: "${NODE_NAME:?NODE_NAME is required}"
: "${PRIVATE_IP:?PRIVATE_IP is required}"
: "${DATA_DIR:?DATA_DIR is required}"
: "${INITIAL_CLUSTER:?INITIAL_CLUSTER is required}"
: "${CLUSTER_TOKEN:?CLUSTER_TOKEN is required}"
CLIENT_PORT="${CLIENT_PORT:-2379}"
PEER_PORT="${PEER_PORT:-2380}"
METRICS_PORT="${METRICS_PORT:-2381}"
ETCDCTL="${ETCDCTL:-etcdctl}"
PEER_URL="https://$PRIVATE_IP:$PEER_PORT"

log() { echo "etcd-node-flags: $*" >&2; }

case ",$INITIAL_CLUSTER," in
  *",$NODE_NAME=$PEER_URL,"*) ;;
  *) log "$NODE_NAME=$PEER_URL is not in INITIAL_CLUSTER ($INITIAL_CLUSTER)"; exit 2 ;;
esac

# `member list -w simple` of the running cluster, or nothing if no other member answers.
running_members() {
  local url others=()
  IFS=, read -r -a urls <<<"${CLUSTER_CLIENT_URLS:-}"
  for url in "${urls[@]}"; do
    [ "$url" = "https://$PRIVATE_IP:$CLIENT_PORT" ] || others+=("$url")
  done
  [ "${#others[@]}" -gt 0 ] || return 0
  # Without etcdctl every probe would fail and an empty member would bootstrap anew.
  command -v "$ETCDCTL" >/dev/null || { log "$ETCDCTL not found"; exit 2; }
  local IFS=,
  ETCDCTL_API=3 "$ETCDCTL" --endpoints="${others[*]}" --dial-timeout=3s --command-timeout=5s \
    member list -w simple 2>/dev/null || true
}

# `member list -w simple` lines look like "ID, STATUS, NAME, PEER URLS, CLIENT URLS,
# LEARNER". A member that has never run has no client URLs yet: "..., PEER URL, , false".
listed() { # members needle
  local line
  while IFS= read -r line; do
    [[ "$line" == *", $2, "* ]] && return 0
  done <<<"$1"
  return 1
}

if [ -d "$DATA_DIR/member/wal" ]; then
  state=existing
  log "$DATA_DIR holds data: rejoining with it"
else
  members="$(running_members)"
  if [ -z "$members" ]; then
    state=new
    log "no data and no running member: bootstrapping the cluster"
  elif listed "$members" "$PEER_URL, "; then
    state=existing
    log "no data; the running cluster expects $PEER_URL: joining it"
  elif listed "$members" "$PEER_URL"; then
    log "the running cluster lists $PEER_URL as a member that has started, with data this one lacks;"
    log "replace it: etcdctl member remove <its ID>, then etcdctl member add $NODE_NAME --peer-urls=$PEER_URL"
    exit 3
  else
    log "a cluster is running but has no member with peer URL $PEER_URL; add this member first:"
    log "  etcdctl member add $NODE_NAME --peer-urls=$PEER_URL"
    exit 3
  fi
fi

cat <<FLAGS
--name=$NODE_NAME
--data-dir=$DATA_DIR
--listen-client-urls=https://$PRIVATE_IP:$CLIENT_PORT,https://127.0.0.1:$CLIENT_PORT
--advertise-client-urls=https://$PRIVATE_IP:$CLIENT_PORT
--listen-peer-urls=$PEER_URL
--initial-advertise-peer-urls=$PEER_URL
--initial-cluster=$INITIAL_CLUSTER
--initial-cluster-token=$CLUSTER_TOKEN
--initial-cluster-state=$state
--listen-metrics-urls=http://127.0.0.1:$METRICS_PORT
FLAGS
