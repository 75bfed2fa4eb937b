"""What the gateway answers itself, for paths it does not forward."""

from __future__ import annotations

import flask

from .responses import json_response

# The feature flag that gates GET /onboarding.
ONBOARDING_FEATURE = "new-user-onboarding"


def answer(request: flask.Request, snapshot, headers: dict[str, str]) -> flask.Response:
    if request.path == "/onboarding":
        if snapshot.feature(ONBOARDING_FEATURE):
            return json_response({"onboarding": "enabled", "revision": snapshot.revision}, 200, headers)
        return json_response({"error": "not found", "revision": snapshot.revision}, 404, headers)
    body = {"revision": snapshot.revision, "synced": snapshot.synced, "applied": snapshot.to_json()}
    return json_response(body, 200, headers)
