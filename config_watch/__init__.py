"""Live configuration from etcd: schema, snapshots, and the list-then-watch loop.

A request calls `snapshot()` once and reads every value from that one object.
"""

from ._errors import AuthError, Compacted, EtcdError, Unavailable
from ._logging import configure_logging
from ._runtime import ConfigRuntime, get_runtime, reset_runtime, snapshot, status
from ._schema import (
    FEATURES,
    GLOBAL_PREFIX,
    MAINTENANCE_MODE,
    RATE_LIMIT,
    RATE_LIMIT_BURST,
    SCHEMA,
    THREADS,
    InvalidValue,
    KeySpec,
    Schema,
    service_prefix,
)
from ._settings import Settings, SettingsError
from ._snapshot import Snapshot, SnapshotStore
from ._watcher import ConfigWatcher

__all__ = [
    "AuthError", "Compacted", "ConfigRuntime", "ConfigWatcher", "EtcdClient", "EtcdError",
    "FEATURES", "GLOBAL_PREFIX", "InvalidValue", "KeySpec", "MAINTENANCE_MODE", "RATE_LIMIT",
    "RATE_LIMIT_BURST", "SCHEMA", "Schema", "Settings", "SettingsError", "Snapshot",
    "SnapshotStore", "THREADS", "Unavailable", "configure_logging", "get_runtime", "reset_runtime",
    "service_prefix", "snapshot", "status",
]


def __getattr__(name: str):
    # The gRPC client loads on first use: importing gRPC costs a cold start ~150 ms.
    if name == "EtcdClient":
        from ._etcd import EtcdClient

        return EtcdClient
    raise AttributeError(f"module 'config_watch' has no attribute {name!r}")
