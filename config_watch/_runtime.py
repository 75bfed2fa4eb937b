"""The process's watcher: created on first use, never at import, anew after a fork.

functions-framework runs gunicorn, which imports the function's module in the master
and then forks workers. A gRPC channel or a thread made before the fork is unusable
after it, so nothing here starts until a request asks for configuration, and a
watcher made in another process is replaced rather than reused.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Mapping

from ._errors import PERMANENT, ConfigUnavailable
from ._logging import configure_logging
from ._pid import current_pid
from ._schema import GLOBAL_PREFIX, service_prefix
from ._settings import Settings
from ._snapshot import Snapshot
from ._source import EtcdSource
from ._status import Status
from ._tls import TlsMaterial
from ._watcher import ConfigWatcher

log = logging.getLogger(__name__)


class ConfigRuntime:
    """A started watcher plus the cold-start policy of the request path."""

    def __init__(self, settings: Settings) -> None:
        """Raises SettingsError (ConfigurationError for TLS files) if the settings
        cannot work: a missing or unreadable file is a bad setting, found here."""
        self.settings = settings
        self.pid = current_pid()
        self.prefixes = [service_prefix(settings.service), GLOBAL_PREFIX]
        tls = TlsMaterial.load(settings)
        self.watcher = ConfigWatcher(lambda: EtcdSource(settings, self.prefixes, tls), self.prefixes, settings)
        # Until this moment a request waits for the first list; after it, none does.
        self._cold_start_deadline = time.monotonic() + settings.initial_wait
        self._warned_unsynced = False

    def start(self) -> "ConfigRuntime":
        self.watcher.start()
        return self

    def stop(self) -> None:
        self.watcher.stop()

    def snapshot(self) -> Snapshot:
        """The snapshot a request should use, start to finish.

        Raises ConfigUnavailable while this process has never synced and etcd refuses
        it for a reason only an operator can fix: defaults must not be served then as
        if they were the configuration.
        """
        watcher = self.watcher
        if not watcher.synced:
            remaining = self._cold_start_deadline - time.monotonic()
            if remaining > 0:
                watcher.wait_settled(remaining)
            failure = watcher.failure
            if not watcher.synced and failure is not None and failure.kind == PERMANENT:
                raise ConfigUnavailable(failure.reason)
            if not watcher.synced and not self._warned_unsynced:
                self._warned_unsynced = True
                log.warning(
                    "no configuration from etcd within %.2fs of start; serving defaults until it answers",
                    self.settings.initial_wait,
                    extra={"json_fields": {"endpoints": [str(e) for e in self.settings.endpoints],
                                           "error": watcher.last_error}},
                )
        return watcher.ensure_fresh()

    def status(self) -> Status:
        """The watcher's status; `.to_json(details)` for a status page."""
        return self.watcher.status()._replace(pid=self.pid, service=self.settings.service)

    def status_json(self) -> dict:
        """The status as a status page shows it: details only if STATUS_DETAILS is on."""
        return self.status().to_json(details=self.settings.status_details)


# The runtime of this process, or None before the first request.
_runtime: ConfigRuntime | None = None
# Guards creation of `_runtime` (double-checked: the fast path takes no lock).
_runtime_lock = threading.Lock()


def get_runtime(env: Mapping[str, str] | None = None) -> ConfigRuntime:
    """This process's runtime, started on first call (and again in a forked child)."""
    global _runtime
    runtime = _runtime
    if runtime is not None and runtime.pid == current_pid():
        return runtime
    with _runtime_lock:
        runtime = _runtime
        if runtime is None or runtime.pid != current_pid():
            settings = Settings.from_env(env)
            configure_logging(settings.log_level)
            # A runtime inherited from the parent is dropped, not stopped: its thread
            # did not survive the fork and its channel must not be touched here.
            runtime = ConfigRuntime(settings).start()
            _runtime = runtime
            log.info("config watcher started", extra={"json_fields": {
                "pid": runtime.pid, "service": settings.service,
                "endpoints": [str(e) for e in settings.endpoints]}})
    return runtime


def reset_runtime() -> None:
    """Stop and forget the runtime (tests, and a function reconfigured in place)."""
    global _runtime
    with _runtime_lock:
        runtime, _runtime = _runtime, None
    if runtime is not None and runtime.pid == os.getpid():
        runtime.stop()


def snapshot() -> Snapshot:
    """The configuration for one request: read it once, use it throughout."""
    return get_runtime().snapshot()


def status() -> Status:
    return get_runtime().status()
