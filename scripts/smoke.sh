#!/usr/bin/env bash
# Smoke test of a deployed gateway: status, headers, and (optionally) how long a flag
# flipped in etcd takes to show in responses. Exits non-zero on the first failure.
# `scripts/smoke.sh --help` for usage.
set -euo pipefail

PROG="smoke"
FLAG_KEY=/config/services/api-gateway/features/new-user-onboarding

usage() {
  cat <<'EOF'
Usage: scripts/smoke.sh [--flip] [URL]

  URL               base URL of the function (or FUNCTION_URL), e.g. the
                    function_url output of terraform/
  --flip            also flip new-user-onboarding in etcd (over IAP SSH to the etcd
                    VM), time until responses show it, then restore it (SMOKE_FLIP=true)

Environment:
  SMOKE_AUTH        auto (default): send an identity token to https URLs except
                    localhost; token: always; none: never
  ID_TOKEN          token to send; default: gcloud auth print-identity-token
  SMOKE_TIMEOUT     seconds per HTTP request (default 10)
  For --flip:
  ETCD_VM, ETCD_ZONE, PROJECT_ID   the etcd VM (terraform output ssh_command)
  SMOKE_FLIP_TIMEOUT   seconds to wait for the change to show (default 30)

Checks: GET /_status is 200 with "synced": true; GET /onboarding (200 or 404)
carries X-Config-Revision and RateLimit-Limit/-Remaining/-Reset.
EOF
}

fail() {
  echo "$PROG: FAIL: $*" >&2
  exit 1
}
ok() { echo "$PROG: ok: $*"; }

now_ms() {
  if [ -n "${EPOCHREALTIME:-}" ]; then # bash 5: microseconds, any OS
    local us="${EPOCHREALTIME/[.,]/}"
    echo $((us / 1000))
  else
    echo $(($(date +%s) * 1000))
  fi
}

URL="${FUNCTION_URL:-}"
SMOKE_FLIP="${SMOKE_FLIP:-false}"
while [ "$#" -gt 0 ]; do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --flip) SMOKE_FLIP=true ;;
    -*) echo "$PROG: unknown option '$1' (see --help)" >&2; exit 2 ;;
    *) URL="$1" ;;
  esac
  shift
done

[ -n "$URL" ] || { echo "$PROG: no URL: pass it as an argument or set FUNCTION_URL (see --help)" >&2; exit 2; }
[[ "$URL" =~ ^https?://[^/[:space:]]+ ]] || { echo "$PROG: '$URL' is not an http(s) URL" >&2; exit 2; }
URL="${URL%/}"
SMOKE_AUTH="${SMOKE_AUTH:-auto}"
SMOKE_TIMEOUT="${SMOKE_TIMEOUT:-10}"
SMOKE_FLIP_TIMEOUT="${SMOKE_FLIP_TIMEOUT:-30}"
command -v curl >/dev/null || fail "curl is not installed"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- authentication -------------------------------------------------------------------

want_token=false
case "$SMOKE_AUTH" in
  token) want_token=true ;;
  none) ;;
  auto)
    if [[ "$URL" =~ ^https:// ]] && ! [[ "$URL" =~ ^https://(localhost|127\.0\.0\.1)(:|/|$) ]]; then
      want_token=true
    fi
    ;;
  *) fail "SMOKE_AUTH must be auto, token or none, got '$SMOKE_AUTH'" ;;
esac

curl_auth=()
if [ "$want_token" = true ]; then
  if [ -z "${ID_TOKEN:-}" ]; then
    ID_TOKEN="$(gcloud auth print-identity-token 2>"$WORK/gcloud.err")" ||
      fail "could not get an identity token: $(cat "$WORK/gcloud.err")"
    [ -n "$ID_TOKEN" ] || fail "gcloud auth print-identity-token printed no token"
  fi
  # Via a header file, so the token stays out of curl's argv.
  printf 'Authorization: Bearer %s\n' "$ID_TOKEN" >"$WORK/auth.header"
  curl_auth=(-H "@$WORK/auth.header")
fi

# GET path -> sets STATUS; body in $WORK/body, headers in $WORK/headers
get() {
  local path="$1"
  STATUS="$(curl -sS -o "$WORK/body" -D "$WORK/headers" -w '%{http_code}' \
    --max-time "$SMOKE_TIMEOUT" ${curl_auth[@]+"${curl_auth[@]}"} "$URL$path" 2>"$WORK/curl.err")" ||
    fail "GET $path: $(cat "$WORK/curl.err")"
}

header() { # name -> value of the last such header (case-insensitive), or nothing
  tr -d '\r' <"$WORK/headers" | awk -v name="$1" '
    BEGIN { name = tolower(name) }
    { i = index($0, ":"); if (i && tolower(substr($0, 1, i - 1)) == name) { v = substr($0, i + 1); sub(/^[ \t]+/, "", v); value = v } }
    END { if (value != "") print value }'
}

json_field() { # name -> raw value of a top-level scalar field in $WORK/body, or nothing
  { tr -d '\n' <"$WORK/body" | grep -oE "\"$1\"[[:space:]]*:[[:space:]]*(\"[^\"]*\"|[^,}[:space:]]+)" |
    sed -n -E '1s/^"[^"]*"[[:space:]]*:[[:space:]]*//p'; } || true
}

# --- /_status ----------------------------------------------------------------------------

get /_status
case "$STATUS" in
  200) ;;
  401 | 403) fail "GET /_status returned $STATUS: not allowed to invoke (private function? try SMOKE_AUTH=token, and check roles/run.invoker)" ;;
  *) fail "GET /_status returned $STATUS, expected 200: $(head -c 300 "$WORK/body")" ;;
esac
synced="$(json_field synced)"
revision="$(json_field revision)"
connected="$(json_field connected)"
[ "$synced" = true ] || fail "/_status says synced=${synced:-<missing>}: the function has not loaded its configuration from etcd ($(head -c 300 "$WORK/body"))"
[[ "$revision" =~ ^[0-9]+$ ]] || fail "/_status has no integer revision (got '${revision:-<missing>}')"
[ "$connected" = true ] || echo "$PROG: warning: /_status says connected=${connected:-<missing>} (synced, but no live watch right now)" >&2
ok "/_status 200, synced, revision $revision, connected ${connected:-?}, staleness $(json_field staleness_seconds)s"

# --- headers on an ordinary response ---------------------------------------------------

check_headers() {
  local name value
  for name in X-Config-Revision RateLimit-Limit RateLimit-Remaining RateLimit-Reset; do
    value="$(header "$name")"
    [ -n "$value" ] || fail "GET /onboarding: response has no $name header"
  done
  [[ "$(header X-Config-Revision)" =~ ^[0-9]+$ ]] ||
    fail "GET /onboarding: X-Config-Revision '$(header X-Config-Revision)' is not an integer"
}

get /onboarding
case "$STATUS" in
  200 | 404) ;;
  *) fail "GET /onboarding returned $STATUS, expected 200 or 404: $(head -c 300 "$WORK/body")" ;;
esac
check_headers
ok "/onboarding $STATUS with X-Config-Revision $(header X-Config-Revision), RateLimit-Limit $(header RateLimit-Limit), RateLimit-Remaining $(header RateLimit-Remaining), RateLimit-Reset $(header RateLimit-Reset)"

case "$SMOKE_FLIP" in
  true | 1 | yes) ;;
  *) echo "$PROG: PASS"; exit 0 ;;
esac

# --- optional: flip a flag in etcd and time until it shows -----------------------------

: "${ETCD_VM:?ETCD_VM is required for --flip (see terraform output ssh_command)}"
: "${ETCD_ZONE:?ETCD_ZONE is required for --flip}"
: "${PROJECT_ID:?PROJECT_ID is required for --flip}"
[[ "$SMOKE_FLIP_TIMEOUT" =~ ^[0-9]+$ ]] || fail "SMOKE_FLIP_TIMEOUT must be whole seconds, got '$SMOKE_FLIP_TIMEOUT'"

etcdctl_on_vm() { # args... (plain words: a key and true/false)
  gcloud compute ssh "$ETCD_VM" --zone="$ETCD_ZONE" --project="$PROJECT_ID" \
    --tunnel-through-iap --quiet --command="sudo etcdctl-operator $*"
}

before_status="$STATUS"
if [ "$before_status" = 200 ]; then flipped=false; want=404; else flipped=true; want=200; fi
original="$(etcdctl_on_vm get --print-value-only "$FLAG_KEY")" || fail "could not read $FLAG_KEY on $ETCD_VM through IAP"
original="$(printf '%s' "$original" | tr -d '\r\n')"

restore() {
  if [ -n "$original" ]; then
    etcdctl_on_vm put "$FLAG_KEY" "$original" >/dev/null || echo "$PROG: warning: could not restore $FLAG_KEY=$original" >&2
  else
    etcdctl_on_vm del "$FLAG_KEY" >/dev/null || echo "$PROG: warning: could not delete $FLAG_KEY" >&2
  fi
}
trap 'restore; rm -rf "$WORK"' EXIT

etcdctl_on_vm put "$FLAG_KEY" "$flipped" >/dev/null || fail "could not write $FLAG_KEY on $ETCD_VM through IAP"
start_ms="$(now_ms)"
deadline=$((SECONDS + SMOKE_FLIP_TIMEOUT))
while :; do
  get /onboarding
  if [ "$STATUS" = "$want" ]; then
    check_headers
    ok "set $FLAG_KEY=$flipped; /onboarding answered $want after $(($(now_ms) - start_ms)) ms (revision $(header X-Config-Revision))"
    break
  fi
  [ "$SECONDS" -lt "$deadline" ] ||
    fail "set $FLAG_KEY=$flipped, but /onboarding still answered $STATUS after ${SMOKE_FLIP_TIMEOUT}s (expected $want)"
  sleep 0.2 # poll interval between requests; the deadline above bounds the wait
done
echo "$PROG: PASS"
