"""Errors of the etcd transports, kept apart so importing them costs no gRPC import."""

from __future__ import annotations


class EtcdError(Exception):
    """Base of every error the etcd transports raise."""


class Unavailable(EtcdError):
    """No answer from this endpoint (down, cut, stalled, no leader): try again, maybe elsewhere."""


class Compacted(EtcdError):
    """The revision asked for was compacted: list again."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (etcd keeps history from {compact_revision})")
        self.compact_revision = compact_revision


class AuthError(EtcdError):
    """Credentials refused or permission denied: retrying soon will not help."""


class GatewayRefused(EtcdError):
    """etcd's JSON gateway will not serve this client (a client certificate with a
    Common Name while auth is on); lists must go over gRPC instead."""


class ConfigurationError(EtcdError):
    """TLS files missing or unreadable."""


# gRPC status codes by number; etcd's JSON gateway reports the same numbers.
_INVALID_ARGUMENT, _PERMISSION_DENIED, _FAILED_PRECONDITION, _OUT_OF_RANGE, _UNAUTHENTICATED = 3, 7, 9, 11, 16
# CANCELLED, UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, INTERNAL, UNAVAILABLE:
# this endpoint did not answer as it should; another try (maybe elsewhere) may work.
_RETRYABLE_CODES = frozenset({1, 2, 4, 8, 10, 13, 14})


def error_for_code(code: int | None, message: str, label: str = "") -> EtcdError:
    """The error kind for an etcd failure with gRPC status `code` (None: no status at all).

    One mapping for both transports, so gRPC and the JSON gateway never disagree on
    what is worth retrying, what needs a relist and what is a credentials problem.
    """
    if code == _OUT_OF_RANGE and "compacted" in message:
        return Compacted(0)
    if code in (_UNAUTHENTICATED, _PERMISSION_DENIED):
        return AuthError(message)
    if code == _INVALID_ARGUMENT and ("authentication failed" in message or "user name" in message):
        return AuthError(message)
    if code == _FAILED_PRECONDITION and "auth" in message:
        return AuthError(message)
    if code is None or code in _RETRYABLE_CODES:
        return Unavailable(message)
    return EtcdError(f"{label or f'status {code}'}: {message}")


def refused_user(username: str | None, error: EtcdError) -> AuthError:
    """An authentication failure said in the operator's terms."""
    return AuthError(f"etcd refused user {username!r} (check ETCD_USERNAME/ETCD_PASSWORD): {error}")


def read_file(path: str, name: str) -> bytes:
    """The bytes of a TLS file named by setting `name`, or a ConfigurationError saying which."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise ConfigurationError(f"{name}: cannot read {path}: {exc.strerror}") from None


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's range end for every key starting with `prefix`."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def covering_range(prefixes: list[str]) -> tuple[bytes, bytes]:
    """One key range that holds every prefix.

    One range means one watch, and etcd delivers every event of a revision in one
    response of one watch, so a transaction touching the service's keys and the
    global keys arrives whole. Keys in between are filtered out by the caller.
    """
    encoded = sorted(p.encode() for p in prefixes)
    return encoded[0], max(prefix_range_end(p) for p in encoded)
