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


class EndpointCursor:
    """The configured endpoints and the one in use: the only holder of that index.

    The lister-watcher and its transports (JSON gateway, gRPC) share one cursor, so
    after a failure they all move to the next endpoint together.
    """

    def __init__(self, endpoints: tuple[Endpoint, ...]) -> None:
        self.endpoints = endpoints
        self._index = 0

    @property
    def current(self) -> Endpoint:
        return self.endpoints[self._index]

    def advance(self) -> Endpoint:
        self._index = (self._index + 1) % len(self.endpoints)
        return self.current


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


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in ("true", "false"):
        raise SettingsError(f"{name}: expected true or false, got {env.get(name)!r}")
    return raw == "true"


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
    # /_status shows endpoint addresses and error text only when this is on: it is
    # exempt from rate limits and may be reachable by anyone who can call the function.
    status_details: bool = False
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
        default = cls._field_defaults  # each default is written once, in the fields above
        raw_endpoints = (env.get("ETCD_ENDPOINTS") or "").strip()
        endpoints = parse_endpoints(raw_endpoints) if raw_endpoints else default["endpoints"]
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
        service = (env.get("CONFIG_SERVICE") or default["service"]).strip()
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
            initial_wait=_float(env, "CONFIG_INITIAL_WAIT_SECONDS", default["initial_wait"]),
            staleness=_float(env, "CONFIG_STALENESS_SECONDS", default["staleness"], minimum=0.1),
            check_timeout=_float(env, "CONFIG_CHECK_TIMEOUT_SECONDS", default["check_timeout"], minimum=0.01),
            request_timeout=_float(env, "ETCD_REQUEST_TIMEOUT_SECONDS", default["request_timeout"], minimum=0.1),
            dead_stream=_float(env, "ETCD_DEAD_STREAM_SECONDS", default["dead_stream"], minimum=0.3),
            keepalive=_float(env, "ETCD_KEEPALIVE_SECONDS", default["keepalive"], minimum=5.0),
            keepalive_timeout=_float(env, "ETCD_KEEPALIVE_TIMEOUT_SECONDS", default["keepalive_timeout"],
                                     minimum=0.5),
            trusted_proxy_hops=_int(env, "TRUSTED_PROXY_HOPS", default["trusted_proxy_hops"]),
            max_clients=_int(env, "RATE_LIMIT_MAX_CLIENTS", default["max_clients"], minimum=1),
            log_level=(env.get("LOG_LEVEL") or default["log_level"]).upper(),
            status_details=_bool(env, "STATUS_DETAILS", default["status_details"]),
            # etcd grants leases in whole seconds, and refuses TTLs below its minimum.
            instance_ttl=_float(env, "INSTANCE_TTL_SECONDS", default["instance_ttl"], minimum=2.0),
        )
