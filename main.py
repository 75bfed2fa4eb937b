"""Cloud Function entry point `api_gateway` (functions-framework, HTTP).

The request policies and their order are in `gateway/` (`gateway/pipeline.py`):
maintenance, rate limit, experiments, then forwarding `/v1/` to the data processor
behind a circuit breaker, or the gateway's own answers. Nothing is started at import:
gunicorn imports this module before forking its workers. One thing is made then, on
purpose: the rate limiter's bucket table, in memory the workers inherit and share.
"""

from __future__ import annotations

import gc

import flask
import functions_framework

from gateway import pipeline


@functions_framework.http
def api_gateway(request: flask.Request) -> flask.Response:
    return pipeline.handle(request)


# What the import built lives as long as the process: frozen, a full collection no
# longer walks it (about 35 ms a time in a worker, measured), nor writes to its pages
# in forked workers (reference counts still do). The import leaves no garbage behind
# to freeze with it.
gc.freeze()
