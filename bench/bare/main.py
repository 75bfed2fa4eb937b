"""The baseline: a bare functions-framework HTTP handler with a gateway-sized answer.

It builds and serialises a JSON body of the gateway's shape and size and sets the same
number of extra headers, but reads no configuration and keeps no rate-limit state, so
"gateway vs bare" is the cost of the configuration snapshot and the rate limiter.
"""

import json

import flask
import functions_framework

_KEYS = (
    "/config/services/api-gateway/rate-limit",
    "/config/global/maintenance-mode",
    "/config/services/api-gateway/rate-limit-burst",
)


@functions_framework.http
def bare(request: flask.Request) -> flask.Response:
    values = {_KEYS[0]: 1000000, _KEYS[1]: False, _KEYS[2]: 1000000}
    body = {"revision": 1, "synced": True, "applied": {"revision": 1, "values": values, "features": {}}}
    # Headers passed as the gateway passes them (to the constructor).
    headers = {"X-Config-Revision": "1", "Cache-Control": "no-store", "RateLimit-Limit": "1000000",
               "RateLimit-Remaining": "999999", "RateLimit-Reset": "1"}
    return flask.Response(json.dumps(body, separators=(",", ":")), status=200, mimetype="application/json",
                          headers=list(headers.items()))
