#!/usr/bin/env bash
# Takes an etcd snapshot and uploads it, with a metadata file beside it, to the backup
# bucket. The etcd VMs run it from a systemd timer (etcd-backup.timer); the startup
# script embeds this file verbatim, and tests/deploy runs this same file against a
# local etcd with a stand-in gcloud.
#
# Only the raft leader uploads: every member holds the same data, so one snapshot per
# tick is enough, and the leader's is never behind. The other members' timers find they
# are followers and exit. (If leadership moves between two members' ticks, that tick
# gets two snapshots or none; the next tick is normal again.)
#
# Environment:
#   ETCDCTL_ENDPOINTS (this member only), ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY
#       etcdctl's own settings; the certificate must be root's (snapshots need it).
#   BACKUP_BUCKET   bucket name, without gs://.
#   BACKUP_PREFIX   object prefix: the cluster's name.
#   MEMBER_NAME     this member's name, recorded in the object name and metadata.
#   BACKUP_SERVICE_ACCOUNT   uploader to act as (gcloud --impersonate-service-account);
#       empty uploads as the caller.
#   BACKUP_ALWAYS=1 uploads from a follower too (a backup taken by hand).
#   ETCDCTL (etcdctl), ETCDUTL (etcdutl), GCLOUD (gcloud), BACKUP_TMPDIR ($TMPDIR).
set -euo pipefail

: "${ETCDCTL_ENDPOINTS:?ETCDCTL_ENDPOINTS is required}"
: "${BACKUP_BUCKET:?BACKUP_BUCKET is required}"
: "${BACKUP_PREFIX:?BACKUP_PREFIX is required}"
: "${MEMBER_NAME:?MEMBER_NAME is required}"
ETCDCTL="${ETCDCTL:-etcdctl}"
ETCDUTL="${ETCDUTL:-etcdutl}"
GCLOUD="${GCLOUD:-gcloud}"
export ETCDCTL_API=3 ETCDCTL_ENDPOINTS

log() { echo "etcd-backup: $*"; }
ctl() { "$ETCDCTL" --dial-timeout=5s --command-timeout=60s "$@"; }

# One field of `endpoint status -w fields` ("MemberID", "Leader", "Revision", "Version").
status_field() { # status-text field
  local line
  while IFS= read -r line; do
    if [[ "$line" =~ ^\"$2\"\ :\ \"?([^\"]*)\"?$ ]]; then
      echo "${BASH_REMATCH[1]}"
      return 0
    fi
  done <<<"$1"
  echo "etcd-backup: no $2 in etcdctl endpoint status" >&2
  return 1
}

status="$(ctl endpoint status -w fields)"
member_id="$(status_field "$status" MemberID)"
leader="$(status_field "$status" Leader)"
if [ "$member_id" != "$leader" ] && [ "${BACKUP_ALWAYS:-0}" != 1 ]; then
  log "member $MEMBER_NAME is not the leader; the leader takes this backup"
  exit 0
fi

work="$(mktemp -d "${BACKUP_TMPDIR:-${TMPDIR:-/tmp}}/etcd-backup.XXXXXX")"
trap 'rm -rf "$work"' EXIT

ctl snapshot save "$work/snapshot.db" >/dev/null
# The revision right after the save: no client had seen a higher one when the snapshot
# was taken. restore.sh bumps past the revision clients saw, so record it.
status="$(ctl endpoint status -w fields)"
revision="$(status_field "$status" Revision)"
version="$(status_field "$status" Version)"
# Verifies the snapshot's integrity hash before anything is uploaded.
"$ETCDUTL" snapshot status "$work/snapshot.db" -w simple >/dev/null
sha256="$(sha256sum "$work/snapshot.db")"
sha256="${sha256%% *}"

taken_at="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
name="$(date -u -d "$taken_at" +%Y%m%dT%H%M%SZ)-rev$revision-$MEMBER_NAME"
mv "$work/snapshot.db" "$work/$name.db"
cat >"$work/$name.json" <<METADATA
{"member": "$MEMBER_NAME", "revision": $revision, "taken_at": "$taken_at", "etcd_version": "$version", "sha256": "$sha256", "snapshot": "$name.db"}
METADATA

impersonate=()
[ -n "${BACKUP_SERVICE_ACCOUNT:-}" ] && impersonate=(--impersonate-service-account="$BACKUP_SERVICE_ACCOUNT")
"$GCLOUD" storage cp "${impersonate[@]}" --quiet "$work/$name.db" "$work/$name.json" \
  "gs://$BACKUP_BUCKET/$BACKUP_PREFIX/"
log "uploaded gs://$BACKUP_BUCKET/$BACKUP_PREFIX/$name.db (revision $revision, sha256 $sha256)"
