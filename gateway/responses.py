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


def unread_body_response(body: dict, status: int, headers: dict[str, str] | None = None) -> flask.Response:
    """A JSON answer that leaves the request's body unread. functions-framework reads
    whatever body a function left unread, whole and without a bound, before it sends a
    plain answer, but not before a streamed one (an iterable without a length); gunicorn
    then drains at most 64 KiB of the rest, for at most 5 s, and closes the connection.
    For answers given before the body was bounded: a 413, a misconfigured gateway."""
    data = json.dumps(body, separators=(",", ":")).encode()
    return flask.Response(iter((data,)), status, [JSON_TYPE, ("Content-Length", str(len(data))),
                                                  *(headers.items() if headers else ())])


def misconfigured(reason: str) -> flask.Response:
    """503 for a deployment whose settings are wrong: logged, and said to the caller.
    Given before the body is bounded, so it leaves the body unread."""
    log.error("gateway misconfigured: %s", reason, extra={"json_fields": {"event": "misconfigured"}})
    return unread_body_response({"error": f"gateway misconfigured: {reason}"}, 503,
                                {"Retry-After": str(MISCONFIGURED_RETRY_AFTER)})
