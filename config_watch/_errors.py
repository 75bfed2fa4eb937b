"""Errors of the etcd transports, and what each means for the watch loop.

Kept apart so importing them costs no gRPC import. `failure_of` is the one place that
decides how the loop goes on after an error (client-go's `isExpiredError`,
LaunchDarkly's `_handle_error`): relist, back off and retry, or retry slowly because
only an operator can fix it.
"""

from __future__ import annotations

from typing import NamedTuple

from ._settings import SettingsError


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


class ConfigurationError(EtcdError, SettingsError):
    """TLS files missing or unreadable: a bad setting, found when the runtime is made."""


class ConfigUnavailable(Exception):
    """No configuration can be served: never synced, and etcd refuses this client for a
    reason only an operator can fix. `reason` is safe to show to any caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


# What the loop does next, by the meaning of the error.
EXPIRED = "expired"  # the resume revision was compacted: list again, at once
TRANSIENT = "transient"  # unavailable, timed out, no leader: back off, try the next endpoint
PERMANENT = "permanent"  # credentials, permissions, TLS files, settings: only an operator can fix it


class Failure(NamedTuple):
    """An error as the loop and the status page see it."""

    kind: str  # EXPIRED, TRANSIENT or PERMANENT
    # Safe to show to anyone (a 503 body, /_status without details): names the
    # setting to fix, never an address, a path, a user name or etcd's own text.
    reason: str
    # The full text, for logs and /_status with STATUS_DETAILS.
    detail: str


def failure_of(err: BaseException) -> Failure:
    """The one classification of every error the watch loop can meet."""
    detail = f"{type(err).__name__}: {err}"
    if isinstance(err, Compacted):
        return Failure(EXPIRED, "the watched revision was compacted", detail)
    if isinstance(err, AuthError):
        if "refused user" in str(err) or "authentication failed" in str(err):
            reason = "etcd refused the credentials (check ETCD_USERNAME/ETCD_PASSWORD)"
        else:
            reason = "etcd denied access to the configuration keys (check the etcd user's role)"
        return Failure(PERMANENT, reason, detail)
    if isinstance(err, SettingsError):  # ConfigurationError too: TLS files unreadable
        return Failure(PERMANENT, f"bad setting: {_setting_named(err)}", detail)
    if isinstance(err, EtcdError):  # Unavailable, and any other answer that is not a success
        return Failure(TRANSIENT, "etcd unreachable", detail)
    return Failure(TRANSIENT, "internal error in the watch loop", detail)  # a bug: logged with its trace


def _setting_named(err: BaseException) -> str:
    """The setting a SettingsError names (its message starts with it), not its value."""
    head = str(err).split(":", 1)[0].strip()
    return head if head and head.replace("_", "").replace("/", "").isalnum() and head.isupper() else "see the logs"
