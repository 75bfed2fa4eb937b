"""The gateway's own deployment settings (the upstream it forwards to), read once.

Every setting is listed in README.md (Configuration settings) with its default; the
etcd side of the configuration is config_watch's. A malformed value is a SettingsError
naming it, which the gateway answers with 503 "misconfigured" rather than a guess.
"""

from __future__ import annotations

import os
import urllib.parse
from typing import Mapping, NamedTuple

from config_watch import SettingsError

# Where the data processor listens when nothing says otherwise (`make run`'s processor).
DEFAULT_PROCESSOR_URL = "http://127.0.0.1:8081"
# A job's input is a JSON document, not an upload: 1 MiB is generous and bounds what
# one request can make a worker hold in memory.
DEFAULT_MAX_BODY_BYTES = 1 << 20
# Idle keep-alive connections a worker process keeps to the processor. gunicorn's
# default is 8 threads per worker, so 8 lets every thread reuse one.
DEFAULT_POOL_CONNECTIONS = 8


def _int(env: Mapping[str, str], name: str, default: int, minimum: int, maximum: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit()) or not minimum <= int(raw) <= maximum:
        raise SettingsError(f"{name}: expected an integer from {minimum} to {maximum}, got {raw[:40]!r}")
    return int(raw)


class Upstream(NamedTuple):
    """The processor's address, split once: scheme, host, port and a path prefix."""

    scheme: str
    host: str
    port: int
    base_path: str  # "" or "/prefix" (no trailing slash), put before the request's path

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}"


def parse_upstream(text: str) -> Upstream:
    """`http(s)://host[:port][/prefix]`; anything else is a SettingsError."""
    try:
        url = urllib.parse.urlsplit(text.strip())
        port = url.port
    except ValueError as exc:
        raise SettingsError(f"PROCESSOR_URL: {exc}: {text[:80]!r}") from None
    if url.scheme not in ("http", "https") or not url.hostname:
        raise SettingsError(f"PROCESSOR_URL: expected http(s)://host[:port], got {text[:80]!r}")
    if url.query or url.fragment or url.username or url.password:
        raise SettingsError("PROCESSOR_URL: no query, fragment or credentials (the token is PROCESSOR_TOKEN)")
    default_port = 443 if url.scheme == "https" else 80
    return Upstream(url.scheme, url.hostname, port or default_port, url.path.rstrip("/"))


def max_body_bytes_from_env(env: Mapping[str, str]) -> int:
    """FORWARD_MAX_BODY_BYTES: the largest request body the gateway takes, on any path."""
    return _int(env, "FORWARD_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, 0, 1 << 30)


class GatewaySettings(NamedTuple):
    upstream: Upstream = parse_upstream(DEFAULT_PROCESSOR_URL)
    # Sent to the processor as `Authorization: Bearer <token>`; None sends none.
    token: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    pool_connections: int = DEFAULT_POOL_CONNECTIONS

    def __repr__(self) -> str:
        return (f"GatewaySettings(upstream={str(self.upstream)!r}, token={'***' if self.token else None}, "
                f"max_body_bytes={self.max_body_bytes}, pool_connections={self.pool_connections})")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "GatewaySettings":
        env = os.environ if env is None else env
        token = (env.get("PROCESSOR_TOKEN") or "").strip() or None
        if token is not None and not all(0x21 <= ord(c) <= 0x7E for c in token):
            raise SettingsError("PROCESSOR_TOKEN: must be printable ASCII without spaces")
        return cls(
            upstream=parse_upstream(env.get("PROCESSOR_URL") or DEFAULT_PROCESSOR_URL),
            token=token,
            max_body_bytes=max_body_bytes_from_env(env),
            pool_connections=_int(env, "FORWARD_POOL_CONNECTIONS", DEFAULT_POOL_CONNECTIONS, 1, 1000),
        )
