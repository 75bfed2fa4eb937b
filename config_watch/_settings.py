"""Settings read from the environment, once, into one immutable object.

Every setting is listed in README.md (Configuration settings) with its default.
"""

from __future__ import annotations

import math
import os
from typing import Mapping, NamedTuple


# A day: longer than any sensible bound, far below what timers and sockets accept.
_MAX_SECONDS = 86_400.0


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


class Endpoint(NamedTuple):
    host: str
    port: int
    secure: bool | None  # None: scheme not given, TLS decided by ETCD_CACERT

    @property
    def target(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        scheme = {True: "https://", False: "http://", None: ""}[self.secure]
        return scheme + self.target


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """`host:port` or `http(s)://host:port`, comma-separated."""
    endpoints = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        secure: bool | None = None
        if "://" in item:
            scheme, _, item = item.partition("://")
            if scheme not in ("http", "https"):
                raise SettingsError(f"ETCD_ENDPOINTS: unsupported scheme {scheme!r} in {text!r}")
            secure = scheme == "https"
        item = item.rstrip("/")
        if item.startswith("["):  # [ipv6]:port
            host, _, port = item[1:].partition("]:")
        else:
            host, _, port = item.rpartition(":")
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise SettingsError(f"ETCD_ENDPOINTS: expected host:port, got {item!r}")
        endpoints.append(Endpoint(host, int(port), secure))
    if not endpoints:
        raise SettingsError("ETCD_ENDPOINTS: no endpoint given")
    return tuple(endpoints)


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not value >= minimum:  # also rejects NaN
        raise SettingsError(f"{name}: must be >= {minimum}, got {raw!r}")
    if not math.isfinite(value) or value > _MAX_SECONDS:
        raise SettingsError(f"{name}: must be at most {_MAX_SECONDS:.0f} seconds, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be >= {minimum}, got {raw!r}")
    return value


def _path(env: Mapping[str, str], name: str) -> str | None:
    raw = env.get(name, "").strip()
    return raw or None


class Settings(NamedTuple):
    """Every setting, typed. A named tuple: immutable, and cheap to define at import."""

    endpoints: tuple[Endpoint, ...] = (Endpoint("127.0.0.1", 2379, None),)
    service: str = "api-gateway"
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    username: str | None = None
    password: str | None = None
    # How long a cold start waits for the first list before serving defaults.
    initial_wait: float = 0.5
    # A request that finds the snapshot last proven current longer ago than this checks etcd first.
    staleness: float = 5.0
    # Deadline of that check, so a request is never held long by an unreachable etcd.
    check_timeout: float = 0.5
    # Deadline of one unary call (list, auth) in the watch loop.
    request_timeout: float = 3.0
    # The watch stream is declared dead after this long without any response;
    # progress requests are sent at a third of it, so a healthy stream always answers.
    dead_stream: float = 5.0
    # gRPC keepalive: etcd refuses pings more often than every 5 s (--grpc-keepalive-min-time).
    keepalive: float = 10.0
    keepalive_timeout: float = 5.0
    trusted_proxy_hops: int = 0
    max_clients: int = 100_000
    log_level: str = "INFO"
    # Lease of a serving process's membership record (/instances/<service>/<id>):
    # a process that stops serving drops out of the member count within this bound.
    instance_ttl: float = 15.0

    def __repr__(self) -> str:
        shown = self._replace(password="***" if self.password else None)
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in zip(self._fields, shown)) + ")"

    @property
    def secure(self) -> bool:
        return bool(self.cacert) or any(e.secure for e in self.endpoints)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        endpoints = parse_endpoints(env.get("ETCD_ENDPOINTS") or "127.0.0.1:2379")
        schemes = {e.secure for e in endpoints} - {None}
        if len(schemes) > 1:
            raise SettingsError("ETCD_ENDPOINTS: mixes http:// and https:// endpoints")
        cacert, cert, key = (_path(env, n) for n in ("ETCD_CACERT", "ETCD_CERT", "ETCD_KEY"))
        if schemes == {False} and cacert:
            raise SettingsError("ETCD_CACERT is set but ETCD_ENDPOINTS uses http://")
        if bool(cert) != bool(key):
            raise SettingsError("ETCD_CERT and ETCD_KEY must be given together")
        if cert and not (cacert or schemes == {True}):
            raise SettingsError("ETCD_CERT needs TLS: set ETCD_CACERT or use https:// endpoints")
        username = env.get("ETCD_USERNAME") or None
        password = env.get("ETCD_PASSWORD") or None
        if bool(username) != bool(password):
            raise SettingsError("ETCD_USERNAME and ETCD_PASSWORD must be given together")
        service = (env.get("CONFIG_SERVICE") or "api-gateway").strip()
        if not service or "/" in service:
            raise SettingsError(f"CONFIG_SERVICE: expected a service name, got {service!r}")
        return cls(
            endpoints=endpoints,
            service=service,
            cacert=cacert,
            cert=cert,
            key=key,
            username=username,
            password=password,
            initial_wait=_float(env, "CONFIG_INITIAL_WAIT_SECONDS", 0.5),
            staleness=_float(env, "CONFIG_STALENESS_SECONDS", 5.0, minimum=0.1),
            check_timeout=_float(env, "CONFIG_CHECK_TIMEOUT_SECONDS", 0.5, minimum=0.01),
            request_timeout=_float(env, "ETCD_REQUEST_TIMEOUT_SECONDS", 3.0, minimum=0.1),
            dead_stream=_float(env, "ETCD_DEAD_STREAM_SECONDS", 5.0, minimum=0.3),
            keepalive=_float(env, "ETCD_KEEPALIVE_SECONDS", 10.0, minimum=5.0),
            keepalive_timeout=_float(env, "ETCD_KEEPALIVE_TIMEOUT_SECONDS", 5.0, minimum=0.5),
            trusted_proxy_hops=_int(env, "TRUSTED_PROXY_HOPS", 0),
            max_clients=_int(env, "RATE_LIMIT_MAX_CLIENTS", 100_000, minimum=1),
            log_level=(env.get("LOG_LEVEL") or "INFO").upper(),
            # etcd grants leases in whole seconds, and refuses TTLs below its minimum.
            instance_ttl=_float(env, "INSTANCE_TTL_SECONDS", 15.0, minimum=2.0),
        )
