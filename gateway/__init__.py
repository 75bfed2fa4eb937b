"""The API gateway's request policy: client identity and per-client rate limits."""

from .identity import client_identity
from .ratelimit import Decision, RateLimiter

__all__ = ["Decision", "RateLimiter", "client_identity"]
