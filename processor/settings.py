"""The processor's own settings, read from the environment once, with clear errors.

The etcd side (ETCD_*, CONFIG_*) is config_watch's `Settings`; these are the HTTP
service's. Every one is listed in README.md (The data processor → Settings).
"""

from __future__ import annotations

import os
from typing import Mapping, NamedTuple

from config_watch import SettingsError

# The service whose keys the processor reads (CONFIG_SERVICE must name it, or be unset).
SERVICE = "data-processor"


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name}: must be between {minimum} and {maximum}, got {raw!r}")
    return value


class ProcessorSettings(NamedTuple):
    host: str = "127.0.0.1"
    port: int = 8081
    # A job's body larger than this is refused with 413 before any of it is hashed.
    max_body_bytes: int = 1 << 20
    # Jobs waiting for a pool thread; one more is refused with 503 rather than queued.
    queue_limit: int = 256
    # How long SIGTERM waits for in-flight and queued jobs before the process exits.
    drain_seconds: int = 30
    # The bearer token every job request must carry; None: no authentication (local runs).
    token: str | None = None

    def __repr__(self) -> str:
        shown = self._replace(token="***" if self.token else None)
        return "ProcessorSettings(" + ", ".join(f"{k}={v!r}" for k, v in zip(self._fields, shown)) + ")"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ProcessorSettings":
        env = os.environ if env is None else env
        service = (env.get("CONFIG_SERVICE") or SERVICE).strip()
        if service != SERVICE:
            # Watching another service's prefix would leave `threads` at its default
            # without a word.
            raise SettingsError(f"CONFIG_SERVICE: the processor reads {SERVICE!r}, not {service!r}")
        host = (env.get("PROCESSOR_HOST") or "127.0.0.1").strip()
        token = env.get("PROCESSOR_TOKEN")
        if token is not None and token.strip() != token:
            raise SettingsError("PROCESSOR_TOKEN: has leading or trailing whitespace")
        if token is not None and 0 < len(token) < 16:
            raise SettingsError("PROCESSOR_TOKEN: shorter than 16 characters")
        return cls(
            host=host,
            port=_int(env, "PROCESSOR_PORT", 8081, 1, 65535),
            max_body_bytes=_int(env, "PROCESSOR_MAX_BODY_BYTES", 1 << 20, 1, 1 << 30),
            queue_limit=_int(env, "PROCESSOR_QUEUE_LIMIT", 256, 1, 4096),
            drain_seconds=_int(env, "PROCESSOR_DRAIN_SECONDS", 30, 0, 3600),
            token=token or None,
        )
