"""The rate-limit step: this process's token buckets, asked once per request.

`check` is the one call the pipeline makes (with consume=False while in maintenance:
a client waiting it out keeps its tokens); `headers` and `refusal` turn the decision
into the answer's `RateLimit-*` headers and the 429.
"""

from __future__ import annotations

import flask

from config_watch import RATE_LIMIT, RATE_LIMIT_BURST

from ._process import PerProcess
from .ratelimit import Decision, RateLimiter
from .responses import json_response

# This process's bucket table (a forked child makes its own).
_limiter: PerProcess[RateLimiter] = PerProcess(RateLimiter)


def check(runtime, snapshot, client: str, path: str, consume: bool = True) -> Decision:
    limiter = _limiter.get(runtime.settings.max_clients)
    return limiter.check(client, snapshot[RATE_LIMIT], snapshot[RATE_LIMIT_BURST], consume=consume)


def headers(decision: Decision) -> dict[str, str]:
    return {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset_seconds),
    }


def refusal(decision: Decision, response_headers: dict[str, str]) -> flask.Response:
    response_headers["Retry-After"] = str(decision.retry_after)
    return json_response({"error": "rate limit exceeded", "retry_after": decision.retry_after}, 429,
                         response_headers)


def reset() -> None:
    """Forget this process's buckets (tests)."""
    _limiter.reset()
