"""The rate-limit step: this process's share of the fleet-wide limit, asked once per request.

`check` is the one call the pipeline makes (with consume=False while in maintenance:
a client waiting it out keeps its tokens). It picks the request's limit (the longest
matching rule, else the default), splits it between the live members in `cluster`
scope, and renews this process's membership when due, off the hot path. `refusal`
turns a refused decision into the 429.
"""

from __future__ import annotations

import flask

from config_watch import get_membership

from ._process import PerProcess
from .ratelimit import FleetRateLimit, RateLimitResult
from .responses import json_response


def _make_step(runtime) -> FleetRateLimit:
    return FleetRateLimit(runtime.settings.max_clients, get_membership(runtime))


# This process's buckets and membership (a forked child makes its own).
_step: PerProcess[FleetRateLimit] = PerProcess(_make_step)


def check(runtime, snapshot, client: str, path: str, consume: bool = True) -> RateLimitResult:
    return _step.get(runtime).check(snapshot, path, client, consume=consume)


def status(runtime) -> dict:
    return _step.get(runtime).status(runtime.watcher.store.current, runtime.settings.status_details)


def refusal(result: RateLimitResult, response_headers: dict[str, str]) -> flask.Response:
    retry_after = result.decision.retry_after
    response_headers["Retry-After"] = str(retry_after)
    return json_response({"error": "rate limit exceeded", "retry_after": retry_after}, 429, response_headers)


def reset() -> None:
    """Forget this process's buckets (tests)."""
    _step.reset()
