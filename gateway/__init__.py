"""The API gateway's request policy: client identity and per-client rate limits."""

from .identity import client_identity
from .ratelimit import Decision, FleetRateLimit, Limit, RateLimiter, RateLimitResult, RuleTable, rate_limit_step

__all__ = ["Decision", "FleetRateLimit", "Limit", "RateLimitResult", "RateLimiter", "RuleTable", "client_identity",
           "rate_limit_step"]
