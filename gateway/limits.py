"""The rate-limit step: this process's share of the fleet-wide limit, asked once per request.

`check` is the one call the pipeline makes (with consume=False while in maintenance:
a client waiting it out keeps its tokens). It picks the request's limit (the longest
matching rule, else the default), splits it between the live members in `cluster`
scope, and renews this process's membership when due, off the hot path. `refusal`
turns a refused decision into the 429.
"""

from __future__ import annotations

import flask

from config_watch import Settings, SettingsError, get_membership

from ._process import PerProcess
from .buckets import BucketTable
from .ratelimit import FleetRateLimit, RateLimitResult
from .responses import json_response


def _max_clients_at_import() -> int:
    try:
        return Settings.from_env().max_clients
    except SettingsError:  # the first request reports it; the table needs a size now
        return Settings.max_clients


# The buckets of this instance, made here at import: gunicorn's master imports the
# function's module before it forks the workers, so they all inherit this one table
# (see `buckets`). Made with the settings' size at import; a runtime whose settings
# ask for another size gets a table of its own.
_table = BucketTable(_max_clients_at_import())


def _make_step(runtime) -> FleetRateLimit:
    max_clients = runtime.settings.max_clients
    table = _table if _table.max_entries == max_clients else BucketTable(max_clients)
    return FleetRateLimit(max_clients, get_membership(runtime, group=table.group), table=table)


# This process's limiter over the shared table, and its membership (a forked child makes its own).
_step: PerProcess[FleetRateLimit] = PerProcess(_make_step)


def prepare(runtime) -> None:
    """Make this process's limiter now, and with it start its membership's first read
    of the member list (on a cold start: beside the config's first read, not after it)."""
    _step.get(runtime)


def check(runtime, snapshot, client: str, path: str, consume: bool = True) -> RateLimitResult:
    return _step.get(runtime).check(snapshot, path, client, consume=consume)


def status(runtime) -> dict:
    return _step.get(runtime).status(runtime.watcher.store.current, runtime.settings.status_details)


def refusal(result: RateLimitResult, response_headers: dict[str, str]) -> flask.Response:
    retry_after = result.decision.retry_after
    response_headers["Retry-After"] = str(retry_after)
    return json_response({"error": "rate limit exceeded", "retry_after": retry_after}, 429, response_headers)


def reset() -> None:
    """Forget the buckets (tests)."""
    _step.reset()
    _table.clear()
