"""The request path: every policy, in the order it runs.

One snapshot is read per request and every step decides from it alone:

0. a body past the limit is refused (413) on every path, before any policy runs;
1. `/_status` answers at once (no policy applies to it).
2. experiments: the client's variants, for every answer and the forwarded request;
3. maintenance: 503 while the switch is on;
4. rate limit: 429 over the client's rate;
5. forwarding: `/v1/...` goes to the processor, behind the circuit breaker;
6. anything else the gateway answers itself.
"""

from __future__ import annotations

import flask

import config_watch
from config_watch import SettingsError

from . import bodies, experiments, limits, local, maintenance
from ._process import PerProcess
from .identity import client_identity
from .responses import json_response, misconfigured

# The service whose keys this function reads (CONFIG_SERVICE must name it).
GATEWAY_SERVICE = "api-gateway"
# Every path under this prefix is forwarded to the processor.
FORWARDED_PREFIX = "/v1/"


def _make_forwarder():
    # Imported on first use: gunicorn's master imports this module before it listens,
    # and the forwarding modules (breaker, pool, settings) add ~5 ms to that.
    from .forward import Forwarder
    from .settings import GatewaySettings

    return Forwarder(GatewaySettings.from_env())


# This process's pool of connections to the processor and its circuit breaker.
_forwarder: PerProcess = PerProcess(_make_forwarder)


def forwarder():
    """This process's `forward.Forwarder` (SettingsError if the upstream settings are malformed)."""
    return _forwarder.get()


def reset() -> None:
    """Forget this process's forwarder and buckets (tests, settings changed in place)."""
    _forwarder.reset()
    limits.reset()


def status(runtime) -> flask.Response:
    body = runtime.status_json()  # addresses and error text only with STATUS_DETAILS=true
    body["rate_limit"] = limits.status(runtime)
    try:
        body["upstream"] = forwarder().status(runtime.watcher.store.current, runtime.settings.status_details)
    except SettingsError as exc:
        body["upstream"] = {"error": str(exc)}
    return json_response(body, 200, {"Cache-Control": "no-store"})


# What the pipeline asks of the last snapshot it served, worked out once per snapshot
# (a snapshot never changes): (snapshot, its revision as text, maintenance on, any
# experiment running). A tuple, read and replaced whole.
_facts: tuple = (None, "", False, False)


def _facts_of(snapshot) -> tuple:
    global _facts
    _facts = (snapshot, str(snapshot.revision), maintenance.active(snapshot), experiments.running(snapshot))
    return _facts


def handle(request: flask.Request) -> flask.Response:
    try:
        runtime = config_watch.get_runtime()
    except SettingsError as exc:
        return misconfigured(str(exc))
    if runtime.settings.service != GATEWAY_SERVICE:
        # The gateway reads the api-gateway keys; watching another service's prefix
        # would leave them at their defaults without a word.
        return misconfigured(f"CONFIG_SERVICE must be {GATEWAY_SERVICE!r}, not {runtime.settings.service!r}")

    path = request.path
    body = b""
    if bodies.declared(request.environ):
        try:
            limit = bodies.limit()
        except SettingsError as exc:
            return misconfigured(str(exc))
        body = bodies.read(request, limit)
    if path == "/_status":
        return status(runtime) if body is not None else bodies.too_large(limit, {"Cache-Control": "no-store"})

    if not runtime.watcher.synced:
        # A cold start: the fleet's member list is read while this request waits for
        # the config, not after it (one round trip to etcd less).
        limits.prepare(runtime)
    try:
        snapshot = runtime.snapshot()  # the one snapshot this request uses
    except config_watch.ConfigUnavailable as exc:  # never synced, and etcd refuses us
        return misconfigured(exc.reason)
    client = client_identity(request.environ, runtime.settings.trusted_proxy_hops)
    held, revision, in_maintenance, has_experiments = _facts
    if held is not snapshot:
        held, revision, in_maintenance, has_experiments = _facts_of(snapshot)
    headers = {"X-Config-Revision": revision, "Cache-Control": "no-store"}

    variants = experiments.header_value(snapshot, client) if has_experiments else None
    if variants:
        headers[experiments.HEADER] = variants
    if body is None or in_maintenance:
        # Refused before the rate limit: its headers, but no token spent.
        headers.update(limits.check(runtime, snapshot, client, path, consume=False).headers())
        return bodies.too_large(limit, headers) if body is None else maintenance.refusal(snapshot, headers)

    limited = limits.check(runtime, snapshot, client, path)
    headers.update(limited.headers())
    if not limited.decision.allowed:
        return limits.refusal(limited, headers)

    if path.startswith(FORWARDED_PREFIX):
        try:
            upstream = forwarder()
        except SettingsError as exc:
            return misconfigured(str(exc))
        return upstream.forward(request, body, snapshot, headers, variants)

    return local.answer(request, snapshot, headers)
