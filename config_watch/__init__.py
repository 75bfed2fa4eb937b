"""Live configuration from etcd: schema, snapshots, and the list-then-watch loop.

A request calls `snapshot()` once and reads every value from that one object.
"""

from ._errors import AuthError, Compacted, ConfigUnavailable, EtcdError, Unavailable
from ._logging import configure_logging
from ._runtime import ConfigRuntime, get_runtime, reset_runtime, snapshot, status
from ._schema import (
    BREAKER_FAILURES,
    BREAKER_HALF_OPEN_SUCCESSES,
    BREAKER_OPEN_SECONDS,
    EXPERIMENTS,
    FEATURES,
    GLOBAL_PREFIX,
    INSTANCES,
    MAINTENANCE_MODE,
    RATE_LIMIT,
    RATE_LIMIT_BURST,
    RATE_LIMIT_SCOPE,
    RATE_LIMITS,
    SCHEMA,
    THREADS,
    UPSTREAM_TIMEOUT_MS,
    InvalidValue,
    KeySpec,
    RateRule,
    Schema,
    Variant,
    instances_prefix,
    service_prefix,
)
from .membership import Membership, get_membership, reset_membership
from .experiments import assign, assignments, experiments_header, variant_for
from ._settings import Settings, SettingsError
from ._snapshot import Snapshot, SnapshotStore
from ._status import Status
from ._watcher import ConfigWatcher

__all__ = [
    "AuthError", "BREAKER_FAILURES", "BREAKER_HALF_OPEN_SUCCESSES", "BREAKER_OPEN_SECONDS", "Compacted",
    "ConfigRuntime", "ConfigUnavailable", "ConfigWatcher", "EXPERIMENTS", "EtcdClient", "EtcdError", "FEATURES",
    "GLOBAL_PREFIX", "INSTANCES", "InvalidValue", "KeySpec", "MAINTENANCE_MODE", "Membership", "RATE_LIMIT",
    "RATE_LIMITS", "RATE_LIMIT_BURST", "RATE_LIMIT_SCOPE", "RateRule", "SCHEMA", "Schema", "Settings",
    "SettingsError", "Snapshot", "SnapshotStore", "Status", "THREADS", "UPSTREAM_TIMEOUT_MS", "Unavailable",
    "Variant", "assign", "assignments", "configure_logging", "experiments_header", "get_membership", "get_runtime",
    "instances_prefix", "reset_membership", "reset_runtime", "service_prefix", "snapshot", "status",
    "variant_for",
]


def __getattr__(name: str):
    # The gRPC client loads on first use: importing gRPC costs a cold start ~150 ms.
    if name == "EtcdClient":
        from ._etcd import EtcdClient

        return EtcdClient
    raise AttributeError(f"module 'config_watch' has no attribute {name!r}")
