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
    "/config/services/api-gateway/rate-limit-burst",
    "/config/services/api-gateway/rate-limit-scope",
    "/config/services/api-gateway/upstream-timeout-ms",
    "/config/services/api-gateway/breaker/failures",
    "/config/services/api-gateway/breaker/open-seconds",
    "/config/services/api-gateway/breaker/half-open-successes",
    "/config/global/maintenance-mode",
)


@functions_framework.http
def bare(request: flask.Request) -> flask.Response:
    # The gateway's `GET /` answer, key for key (every exact key of the schema and its
    # open families), so both serve the same bytes.
    values = dict(zip(_KEYS, (1000000, 1000000, "cluster", 5000, 5, 30, 3, False)))
    body = {"revision": 1, "synced": True, "applied": {"revision": 1, "values": values, "features": {},
                                                       "rate_limits": {}, "experiments": {}}}
    # Headers passed as the gateway passes them (to the constructor).
    headers = {"X-Config-Revision": "1", "Cache-Control": "no-store", "RateLimit-Limit": "1000000",
               "RateLimit-Remaining": "999999", "RateLimit-Reset": "1",
               "RateLimit-Policy": "1000000;w=60;burst=1000000"}
    return flask.Response(json.dumps(body, separators=(",", ":")), status=200, mimetype="application/json",
                          headers=list(headers.items()))
