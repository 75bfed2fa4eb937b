"""The API gateway's request policies and the order they run in (`pipeline.handle`).

maintenance, limits (rate limit), experiments, forward (with breaker) and local answers
are one module each; identity says who a request is; settings are the deployment's.
"""

from .identity import client_identity
from .pipeline import handle
from .ratelimit import Decision, FleetRateLimit, Limit, RateLimiter, RateLimitResult, RuleTable

__all__ = ["Decision", "FleetRateLimit", "Limit", "RateLimitResult", "RateLimiter", "RuleTable", "client_identity",
           "handle"]
