"""The maintenance step: while `/config/global/maintenance-mode` is true, every path
but `/_status` is answered 503 before anything else is done for it."""

from __future__ import annotations

import flask

from config_watch import MAINTENANCE_MODE

from .responses import json_response

# Seconds a client is told to wait before retrying during maintenance.
RETRY_AFTER = 60


def active(snapshot) -> bool:
    return bool(snapshot[MAINTENANCE_MODE])


def refusal(snapshot, headers: dict[str, str]) -> flask.Response:
    headers["Retry-After"] = str(RETRY_AFTER)
    return json_response({"error": "maintenance", "revision": snapshot.revision}, 503, headers)
