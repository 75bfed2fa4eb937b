"""Cloud Function entry point `api_gateway` (functions-framework, HTTP).

Every request reads one configuration snapshot and applies, from it alone: the
maintenance switch, the per-client rate limit and the feature flags. Nothing is
started at import: gunicorn imports this module before forking its workers.
"""

from __future__ import annotations

import json
import logging
import os
import threading

import flask
import functions_framework

import config_watch
from config_watch import MAINTENANCE_MODE, RATE_LIMIT, RATE_LIMIT_BURST
from gateway import Decision, RateLimiter, client_identity

log = logging.getLogger("main")

# Seconds a client is told to wait before retrying during maintenance.
MAINTENANCE_RETRY_AFTER = 60
# The service whose keys this function reads (CONFIG_SERVICE must name it).
GATEWAY_SERVICE = "api-gateway"
# The feature flag that gates GET /onboarding.
ONBOARDING_FEATURE = "new-user-onboarding"

# This process's bucket table and the pid it was made in (a forked child makes its own).
_limiter: tuple[int, RateLimiter] | None = None
# Guards creation of `_limiter`.
_limiter_lock = threading.Lock()


def _get_limiter(max_clients: int) -> RateLimiter:
    global _limiter
    current = _limiter
    if current is None or current[0] != os.getpid():
        with _limiter_lock:
            current = _limiter
            if current is None or current[0] != os.getpid():
                current = _limiter = (os.getpid(), RateLimiter(max_clients))
    return current[1]


def _json(body: dict, status: int, headers: dict[str, str] | None = None) -> flask.Response:
    # Headers given to the constructor: setting them one by one costs ~7 µs each.
    return flask.Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json",
                          headers=list((headers or {}).items()))


def _misconfigured(reason: str) -> flask.Response:
    """503 for a deployment whose settings are wrong: logged, and said to the caller."""
    log.error("gateway misconfigured: %s", reason)
    return _json({"error": f"gateway misconfigured: {reason}"}, 503, {"Retry-After": str(MAINTENANCE_RETRY_AFTER)})


def _rate_headers(decision: Decision) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset_seconds),
    }


@functions_framework.http
def api_gateway(request: flask.Request) -> flask.Response:
    try:
        runtime = config_watch.get_runtime()
    except config_watch.SettingsError as exc:
        return _misconfigured(str(exc))

    if runtime.settings.service != GATEWAY_SERVICE:
        # The gateway reads the api-gateway keys; watching another service's prefix
        # would leave them at their defaults without a word.
        return _misconfigured(f"CONFIG_SERVICE must be {GATEWAY_SERVICE!r}, not {runtime.settings.service!r}")

    if request.path == "/_status":
        return _json(runtime.status_json(), 200, {"Cache-Control": "no-store"})

    try:
        snapshot = runtime.snapshot()  # the one snapshot this request uses
    except config_watch.ConfigUnavailable as exc:  # never synced, and etcd refuses us
        return _misconfigured(exc.reason)
    limiter = _get_limiter(runtime.settings.max_clients)
    client = client_identity(request.environ, runtime.settings.trusted_proxy_hops)
    rate, burst = snapshot[RATE_LIMIT], snapshot[RATE_LIMIT_BURST]
    headers = {"X-Config-Revision": str(snapshot.revision), "Cache-Control": "no-store"}

    if snapshot[MAINTENANCE_MODE]:
        # A client waiting out maintenance keeps its tokens: look, do not take.
        headers.update(_rate_headers(limiter.check(client, rate, burst, consume=False)))
        headers["Retry-After"] = str(MAINTENANCE_RETRY_AFTER)
        return _json({"error": "maintenance", "revision": snapshot.revision}, 503, headers)

    decision = limiter.check(client, rate, burst)
    headers.update(_rate_headers(decision))
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after)
        return _json({"error": "rate limit exceeded", "retry_after": decision.retry_after}, 429, headers)

    if request.path == "/onboarding":
        if snapshot.feature(ONBOARDING_FEATURE):
            return _json({"onboarding": "enabled", "revision": snapshot.revision}, 200, headers)
        return _json({"error": "not found", "revision": snapshot.revision}, 404, headers)

    body = {"revision": snapshot.revision, "synced": snapshot.synced, "applied": snapshot.to_json()}
    return _json(body, 200, headers)
