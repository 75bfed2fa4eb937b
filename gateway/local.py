"""What the gateway answers itself, for paths it does not forward."""

from __future__ import annotations

import json

import flask

from .responses import JSON_TYPE, json_response

# The feature flag that gates GET /onboarding.
ONBOARDING_FEATURE = "new-user-onboarding"


def answer(request: flask.Request, snapshot, headers: dict[str, str]) -> flask.Response:
    if request.path == "/onboarding":
        if snapshot.feature(ONBOARDING_FEATURE):
            return json_response({"onboarding": "enabled", "revision": snapshot.revision}, 200, headers)
        return json_response({"error": "not found", "revision": snapshot.revision}, 404, headers)
    return flask.Response(_applied_body(snapshot), 200, [JSON_TYPE, *headers.items()])


# The last snapshot answered and its JSON: a snapshot never changes, so its answer is
# serialised and encoded once per revision, not once per request (a tuple: read and
# replaced whole).
_applied: tuple[object, bytes] = (None, b"")


def _applied_body(snapshot) -> bytes:
    global _applied
    held_snapshot, data = _applied
    if held_snapshot is not snapshot:
        body = {"revision": snapshot.revision, "synced": snapshot.synced, "applied": snapshot.to_json()}
        data = json.dumps(body, separators=(",", ":")).encode()
        _applied = (snapshot, data)
    return data
