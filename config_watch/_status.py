"""The watcher's state as a value (LaunchDarkly's `DataSourceStatus`), turned into JSON
only at the edge, with or without the details an unauthenticated caller must not see."""

from __future__ import annotations

from typing import Any, NamedTuple

from ._snapshot import Rejection

# The states, in the words of LaunchDarkly's data source status.
INITIALIZING = "initializing"  # never synced, no error only an operator can fix
VALID = "valid"  # watching, and current (or opening the watch with nothing failed since a list)
INTERRUPTED = "interrupted"  # synced before; the watch is down for now (serving the last good snapshot)
FAILED = "failed"  # an error only an operator can fix (credentials, permissions, TLS files)


class Status(NamedTuple):
    state: str
    revision: int
    synced: bool
    connected: bool
    staleness_seconds: float
    stale: bool
    error_kind: str | None  # "transient" or "permanent" (None: no error since the last success)
    reason: str | None  # safe for anyone: names what to fix, never an address or etcd's text
    error: str | None  # the full text (details only)
    endpoint: str | None  # details only
    etcd_version: str | None
    rejected: tuple[Rejection, ...]
    counters: dict[str, int]
    pid: int = 0
    service: str = ""

    def to_json(self, details: bool = False) -> dict[str, Any]:
        """The status as /_status answers it. Without `details`: no endpoint address, no
        error text, no rejected value (only which key, at which revision)."""
        body: dict[str, Any] = {
            "state": self.state,
            "revision": self.revision,
            "synced": self.synced,
            "connected": self.connected,
            "staleness_seconds": round(self.staleness_seconds, 3),
            "stale": self.stale,
            "error_kind": self.error_kind,
            "reason": self.reason,
            "etcd_version": self.etcd_version,
            "counters": dict(self.counters),
            "pid": self.pid,
            "service": self.service,
        }
        if details:
            body["endpoint"] = self.endpoint
            body["last_error"] = self.error
            body["rejected"] = [r.to_json() for r in self.rejected]
        else:
            body["rejected"] = [{"key": r.key, "revision": r.revision} for r in self.rejected]
        return body
