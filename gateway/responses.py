"""JSON answers the gateway gives itself."""

from __future__ import annotations

import json
import logging

import flask

log = logging.getLogger(__name__)

# Seconds a caller of a misconfigured gateway is told to wait (a redeploy fixes it).
MISCONFIGURED_RETRY_AFTER = 60


# The Content-Type of every JSON answer, given as a header: a response told its
# mimetype instead works the header out again on each request (~4 µs).
JSON_TYPE = ("Content-Type", "application/json")


def json_response(body: dict, status: int, headers: dict[str, str] | None = None) -> flask.Response:
    # Headers given to the constructor: setting them one by one costs ~7 µs each.
    return flask.Response(json.dumps(body, separators=(",", ":")), status,
                          [JSON_TYPE, *headers.items()] if headers else [JSON_TYPE])


def misconfigured(reason: str) -> flask.Response:
    """503 for a deployment whose settings are wrong: logged, and said to the caller."""
    log.error("gateway misconfigured: %s", reason, extra={"json_fields": {"event": "misconfigured"}})
    return json_response({"error": f"gateway misconfigured: {reason}"}, 503,
                         {"Retry-After": str(MISCONFIGURED_RETRY_AFTER)})
