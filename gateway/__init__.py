"""The API gateway's request policies and the order they run in (`pipeline.handle`).

maintenance, limits (rate limit), experiments, forward (with breaker) and local answers
are one module each; identity says who a request is; settings are the deployment's.
"""

from .breaker import CircuitBreaker, Thresholds
from .identity import client_identity
from .pipeline import handle
from .ratelimit import Decision, RateLimiter
from .settings import GatewaySettings

__all__ = ["CircuitBreaker", "Decision", "GatewaySettings", "RateLimiter", "Thresholds", "client_identity", "handle"]
