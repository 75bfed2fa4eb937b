"""Cloud Function entry point `api_gateway` (functions-framework, HTTP).

Every request reads one configuration snapshot and applies, from it alone: the
maintenance switch, the per-client rate limit and the feature flags. Nothing is
started at import: gunicorn imports this module before forking its workers.
"""

from __future__ import annotations

import json
import logging

import flask
import functions_framework

import config_watch
from config_watch import MAINTENANCE_MODE
from gateway import client_identity, rate_limit_step

log = logging.getLogger("main")

# Seconds a client is told to wait before retrying during maintenance.
MAINTENANCE_RETRY_AFTER = 60
# The service whose keys this function reads (CONFIG_SERVICE must name it).
GATEWAY_SERVICE = "api-gateway"
# The feature flag that gates GET /onboarding.
ONBOARDING_FEATURE = "new-user-onboarding"


def _json(body: dict, status: int, headers: dict[str, str] | None = None) -> flask.Response:
    # Headers given to the constructor: setting them one by one costs ~7 µs each.
    return flask.Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json",
                          headers=list((headers or {}).items()))


def _misconfigured(reason: str) -> flask.Response:
    """503 for a deployment whose settings are wrong: logged, and said to the caller."""
    log.error("gateway misconfigured: %s", reason)
    return _json({"error": f"gateway misconfigured: {reason}"}, 503, {"Retry-After": str(MAINTENANCE_RETRY_AFTER)})


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

    rate_limit = rate_limit_step(runtime)  # this process's buckets and membership
    if request.path == "/_status":
        status = runtime.status()
        status["rate_limit"] = rate_limit.status(runtime.watcher.store.current)
        return _json(status, 200, {"Cache-Control": "no-store"})

    snapshot = runtime.snapshot()  # the one snapshot this request uses
    client = client_identity(request.environ, runtime.settings.trusted_proxy_hops)
    headers = {"X-Config-Revision": str(snapshot.revision), "Cache-Control": "no-store"}

    if snapshot[MAINTENANCE_MODE]:
        # A client waiting out maintenance keeps its tokens: look, do not take.
        headers.update(rate_limit.check(snapshot, request.path, client, consume=False).headers())
        headers["Retry-After"] = str(MAINTENANCE_RETRY_AFTER)
        return _json({"error": "maintenance", "revision": snapshot.revision}, 503, headers)

    # --- rate-limit step: the request's rule (or the default), split across the fleet
    # in cluster scope; also renews this process's membership when due (off the hot path).
    limited = rate_limit.check(snapshot, request.path, client)
    decision = limited.decision
    headers.update(limited.headers())
    # --- end of the rate-limit step
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after)
        return _json({"error": "rate limit exceeded", "retry_after": decision.retry_after}, 429, headers)

    if request.path == "/onboarding":
        if snapshot.feature(ONBOARDING_FEATURE):
            return _json({"onboarding": "enabled", "revision": snapshot.revision}, 200, headers)
        return _json({"error": "not found", "revision": snapshot.revision}, 404, headers)

    body = {"revision": snapshot.revision, "synced": snapshot.synced, "applied": snapshot.to_json()}
    return _json(body, 200, headers)
