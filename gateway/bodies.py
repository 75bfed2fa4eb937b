"""The request body's bound, on every path.

The gateway reads a body only to forward it, but functions-framework reads whatever
body its function left unread, whole, before it sends a plain answer. A body past the
limit, or one that never ends (a Content-Length nothing follows, a chunked body whose
last chunk never comes), would then be held in memory, or keep the client and a
worker thread waiting for ever, whatever the gateway answered. So the bound is
checked on every path before any policy runs, and its 413 leaves the rest unread
(`responses.unread_body_response`).
"""

from __future__ import annotations

import os

import flask

from .responses import unread_body_response


def declared(environ: dict) -> bool:
    """Whether the request says it has a body (a non-zero length, or chunked)."""
    return environ.get("CONTENT_LENGTH", "0") not in ("", "0") or "HTTP_TRANSFER_ENCODING" in environ


def limit() -> int:
    """FORWARD_MAX_BODY_BYTES (SettingsError if malformed). Read apart from the
    forwarder's settings, so that a wrong PROCESSOR_URL does not refuse bodies on the
    paths the gateway answers itself."""
    from .settings import max_body_bytes_from_env  # not at import: see pipeline._make_forwarder

    return max_body_bytes_from_env(os.environ)


def read(request: flask.Request, limit: int) -> bytes | None:
    """The whole body, or None if it is longer than `limit` (by its Content-Length,
    before reading any of it, or after reading `limit` + 1 bytes of a chunked one)."""
    length = request.content_length
    if length is not None and length > limit:
        return None
    data = request.stream.read(limit + 1)
    return data if len(data) <= limit else None


def too_large(limit: int, headers: dict[str, str]) -> flask.Response:
    """413, leaving the rest of the body unread."""
    return unread_body_response({"error": f"request body larger than {limit} bytes"}, 413, headers)
