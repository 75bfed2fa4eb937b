"""An OpenFeature provider backed by the watched etcd configuration.

    from openfeature import api
    from config_watch.openfeature import EtcdProvider

    api.set_provider_and_wait(EtcdProvider())
    client = api.get_client()
    client.get_boolean_value("new-user-onboarding", False)

Flag keys, by resolution type (every resolution reads one snapshot, and its etcd
revision is in `flag_metadata["revision"]`):

- boolean: a name in the service's `features/` family (`new-user-onboarding`), or
  the full path of a `bool` key (`/config/global/maintenance-mode`);
- integer: the full path of an `int` key (`/config/services/api-gateway/rate-limit`);
- string: an experiment name (`checkout` for `experiments/checkout`), whose value is
  the variant of the evaluation context's targeting key by the assignment every
  service uses (`config_watch.assign`), reason SPLIT; or the full path of an `enum` key.

An unset feature resolves to false with reason DEFAULT, not FLAG_NOT_FOUND: the
schema declares the family's default false and a deleted feature means "off" to the
gateway, so a Python service must not turn it on through a caller's default of true.
A name that cannot be a feature (a `/` in it, or a service without a `features/`
family), an unknown key or experiment is FLAG_NOT_FOUND; a key of another type is
TYPE_MISMATCH. Either way the caller's default is returned.

`openfeature-sdk` is optional: only this module imports it, and `config_watch` never
imports this module.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable, Mapping, Sequence

try:
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.event import ProviderEventDetails
    from openfeature.exception import ErrorCode, GeneralError, ProviderNotReadyError
    from openfeature.flag_evaluation import FlagResolutionDetails, Reason
    from openfeature.provider import AbstractProvider, Metadata, ProviderStatus
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "config_watch.openfeature needs the OpenFeature SDK: pip install openfeature-sdk"
    ) from exc

from ._errors import PERMANENT
from ._runtime import ConfigRuntime, get_runtime
from ._schema import SCHEMA, service_prefix
from ._snapshot import Snapshot
from ._watcher import ConfigWatcher
from .experiments import variant_for

log = logging.getLogger(__name__)

# How long `initialize` waits for the first list before it gives up and the SDK marks
# the provider ERROR (PROVIDER_NOT_READY); it turns READY when the list lands. Long
# enough for a slow etcd start, short enough that a service is not held at start-up.
DEFAULT_INIT_TIMEOUT = 5.0
# Longest a status change (stale, error, recovered) waits to be noticed; a new
# snapshot wakes the monitor at once. Four checks a second cost nothing measurable.
MONITOR_INTERVAL = 0.25


def permanent_error(watcher: ConfigWatcher) -> str | None:
    """The watcher's error if it is one retrying soon will not fix (refused credentials or
    permission, unreadable TLS files), else None. It makes the provider ERROR; the watcher
    keeps retrying slowly, so a fix on the etcd side brings it back to READY."""
    failure = watcher.failure
    if failure is not None and failure.kind == PERMANENT:
        return failure.detail
    return None


def watcher_status(watcher: ConfigWatcher) -> ProviderStatus:
    """The OpenFeature status the watcher's state amounts to."""
    if permanent_error(watcher):
        return ProviderStatus.ERROR
    if not watcher.synced:
        return ProviderStatus.NOT_READY
    if watcher.staleness() > watcher.settings.staleness:
        return ProviderStatus.STALE
    return ProviderStatus.READY


class _Found:
    """What a flag key names in one snapshot: a typed value, and how it was decided."""

    __slots__ = ("value", "kind", "reason", "key", "mod_revision")

    def __init__(self, value: Any, kind: str, reason: str, key: str, mod_revision: int | None = None) -> None:
        self.value, self.kind, self.reason, self.key, self.mod_revision = value, kind, reason, key, mod_revision


class EtcdProvider(AbstractProvider):
    """OpenFeature flags from a running config watcher (by default, this process's runtime).

    Status follows the watcher: NOT_READY until its first list, READY, STALE while the
    snapshot is older than the staleness bound, ERROR on a permanent error. Every
    published snapshot that changes a flag emits PROVIDER_CONFIGURATION_CHANGED with
    the changed flag keys.
    """

    def __init__(
        self,
        watcher: ConfigWatcher | None = None,
        *,
        runtime_factory: Callable[[], ConfigRuntime] = get_runtime,
        init_timeout: float = DEFAULT_INIT_TIMEOUT,
        monitor_interval: float = MONITOR_INTERVAL,
    ) -> None:
        """`watcher`: a started ConfigWatcher; None takes the process's runtime (created
        from the environment, like the services', when the SDK initialises the provider)."""
        super().__init__()
        self._watcher = watcher
        self._runtime_factory = runtime_factory
        self.init_timeout = init_timeout
        self.monitor_interval = monitor_interval
        self._stop = threading.Event()
        self._monitor: threading.Thread | None = None
        # The status last reported to the SDK (by initialize's outcome or an event).
        self._reported = ProviderStatus.NOT_READY
        # The snapshot the last CONFIGURATION_CHANGED (or READY) was about.
        self._seen: Snapshot | None = None

    # --- lifecycle -----------------------------------------------------------------

    @property
    def watcher(self) -> ConfigWatcher:
        if self._watcher is None:
            self._watcher = self._runtime_factory().watcher
        return self._watcher

    @property
    def status(self) -> ProviderStatus:
        """The status this provider last reported to the SDK."""
        return self._reported

    def get_metadata(self) -> Metadata:
        return Metadata(name="etcd")

    def initialize(self, evaluation_context: EvaluationContext) -> None:
        """Wait (up to `init_timeout`) for the watcher's first list, then watch it.

        Returning makes the SDK report READY; raising makes it report ERROR, and the
        monitor reports READY once the first list lands.
        """
        watcher = self.watcher
        self._stop.clear()
        deadline = time.monotonic() + self.init_timeout
        # In short steps, so a permanent error or a shutdown ends the wait early.
        while not watcher.synced and not self._stop.is_set() and not permanent_error(watcher):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            watcher.wait_synced(min(0.1, remaining))
        if self._stop.is_set():
            raise ProviderNotReadyError("provider shut down while initialising")
        self._seen = watcher.store.current
        error = permanent_error(watcher)
        # The SDK reports READY if this returns, ERROR if it raises; the monitor reports
        # every change after that (STALE, ERROR, READY again).
        self._reported = ProviderStatus.READY if watcher.synced and not error else ProviderStatus.ERROR
        self._start_monitor()
        if error:
            raise GeneralError(f"etcd configuration unavailable: {error}")
        if not watcher.synced:
            raise ProviderNotReadyError(
                f"no configuration from etcd within {self.init_timeout:g}s; "
                f"callers get their defaults until it answers (last error: {watcher.last_error})")

    def shutdown(self) -> None:
        """Stop the monitor thread. The watcher is left running: it is shared with the
        service (the process's runtime) or owned by whoever passed it in."""
        self._stop.set()
        monitor, self._monitor = self._monitor, None
        if monitor is not None and monitor is not threading.current_thread():
            monitor.join(max(1.0, 4 * self.monitor_interval))

    def _start_monitor(self) -> None:
        if self._monitor is not None and self._monitor.is_alive():
            return
        self._monitor = threading.Thread(target=self._run_monitor, name="openfeature-etcd", daemon=True)
        self._monitor.start()

    # --- the monitor: events from the watcher's state ------------------------------

    def _run_monitor(self) -> None:
        # A daemon thread over the store's condition: it wakes at each new snapshot, and
        # at least every `monitor_interval` to look at staleness and errors, which no
        # snapshot announces. A store subscription can replace the wait later.
        # The first look waits one interval: the SDK reports initialize's outcome just
        # after it returns or raises, and a READY sent before that would be overwritten.
        self._stop.wait(self.monitor_interval)
        while not self._stop.is_set():
            try:
                seen = self._seen
                snapshot = self.watcher.store.wait_for(lambda s: s is not seen, self.monitor_interval)
                if self._stop.is_set():
                    return
                self._observe(snapshot)
            except Exception:  # the monitor never dies; the next pass tries again
                log.exception("openfeature provider monitor failed; retrying")
                self._stop.wait(self.monitor_interval)

    def _observe(self, snapshot: Snapshot | None) -> None:
        watcher = self.watcher
        status = watcher_status(watcher)
        revision = watcher.store.current.revision
        if status is not self._reported and status is not ProviderStatus.NOT_READY:
            # NOT_READY has no event: before the first list the SDK already says it
            # (NOT_READY, or ERROR/PROVIDER_NOT_READY after the init timeout).
            self._report(status, revision)
        if snapshot is not None and snapshot is not self._seen:
            previous, self._seen = self._seen, snapshot
            if previous is not None and previous.synced and snapshot.synced:
                changed = changed_flags(previous, snapshot, watcher.settings.service)
                if changed:
                    log.info("configuration changed at revision %d", snapshot.revision,
                             extra={"json_fields": {"revision": snapshot.revision, "flags_changed": changed}})
                    self.emit_provider_configuration_changed(ProviderEventDetails(
                        flags_changed=changed, message=f"revision {snapshot.revision}",
                        metadata={"revision": snapshot.revision}))

    def _report(self, status: ProviderStatus, revision: int) -> None:
        previous, self._reported = self._reported, status
        metadata = {"revision": revision, "staleness_seconds": round(self.watcher.staleness(), 3)}
        log.info("openfeature provider %s -> %s", previous.value, status.value,
                 extra={"json_fields": {"revision": revision, "status": status.value,
                                        "error": self.watcher.last_error}})
        if status is ProviderStatus.READY:
            self.emit_provider_ready(ProviderEventDetails(message=f"revision {revision}", metadata=metadata))
        elif status is ProviderStatus.STALE:
            self.emit_provider_stale(ProviderEventDetails(
                message=f"configuration not proven current for over {self.watcher.settings.staleness:g}s",
                metadata=metadata))
        elif status is ProviderStatus.ERROR:
            self.emit_provider_error(ProviderEventDetails(
                message=permanent_error(self.watcher) or "etcd configuration unavailable",
                error_code=ErrorCode.GENERAL, metadata=metadata))

    # --- resolution ----------------------------------------------------------------

    def resolve_boolean_details(self, flag_key: str, default_value: bool,
                                evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, evaluation_context, "bool")

    def resolve_integer_details(self, flag_key: str, default_value: int,
                                evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[int]:
        return self._resolve(flag_key, default_value, evaluation_context, "int")

    def resolve_string_details(self, flag_key: str, default_value: str,
                               evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, evaluation_context, "string")

    def resolve_float_details(self, flag_key: str, default_value: float,
                              evaluation_context: EvaluationContext | None = None) -> FlagResolutionDetails[float]:
        return self._resolve(flag_key, default_value, evaluation_context, "float")

    def resolve_object_details(
        self, flag_key: str, default_value: Sequence[Any] | Mapping[str, Any],
        evaluation_context: EvaluationContext | None = None,
    ) -> FlagResolutionDetails[Sequence[Any] | Mapping[str, Any]]:
        return self._resolve(flag_key, default_value, evaluation_context, "object")

    def _resolve(self, flag_key: str, default: Any, context: EvaluationContext | None, wanted: str):
        watcher = self.watcher
        # The one snapshot of this resolution: every value and the revision come from it.
        snapshot = watcher.ensure_fresh()
        if not snapshot.synced:
            return _error(default, ErrorCode.PROVIDER_NOT_READY,
                          f"no configuration from etcd yet (last error: {watcher.last_error})")
        metadata: dict[str, Any] = {"revision": snapshot.revision}
        found = lookup(snapshot, flag_key, wanted, watcher.settings.service)
        if isinstance(found, tuple):
            code, message = found
            return _error(default, code, message, metadata)
        metadata["key"] = found.key
        if found.mod_revision is not None:
            metadata["mod_revision"] = found.mod_revision
        if found.kind == "split":
            targeting_key = context.targeting_key if context is not None else None
            if not targeting_key:
                return _error(default, ErrorCode.TARGETING_KEY_MISSING,
                              f"experiment {flag_key!r} needs a targeting_key in the evaluation context", metadata)
            variant = variant_for(found.value, flag_key, targeting_key)
            return FlagResolutionDetails(value=variant, variant=variant, reason=Reason.SPLIT, flag_metadata=metadata)
        reason = found.reason
        if reason == Reason.STATIC and watcher.staleness() > watcher.settings.staleness:
            reason = Reason.STALE  # the last good value, not proven current
        return FlagResolutionDetails(value=found.value, reason=reason, flag_metadata=metadata)


def _error(default: Any, code: ErrorCode, message: str, metadata: Mapping[str, Any] | None = None):
    return FlagResolutionDetails(value=default, reason=Reason.ERROR, error_code=code, error_message=message,
                                 flag_metadata=dict(metadata or {}))


# Which schema value types each OpenFeature resolution type reads.
_KINDS = {"bool": ("bool",), "int": ("int",), "string": ("enum", "split"), "float": (), "object": ()}


def _family(snapshot: Snapshot, service: str, label: str) -> str | None:
    """The path of the service's open family `label` (`features`), if this snapshot has it."""
    path = f"{service_prefix(service)}{label}/"
    return path if path in snapshot.families else None


def lookup(snapshot: Snapshot, flag_key: str, wanted: str, service: str) -> _Found | tuple[ErrorCode, str]:
    """What `flag_key` names in `snapshot` for a resolution of type `wanted`, or
    (error code, message): FLAG_NOT_FOUND or TYPE_MISMATCH."""
    found = _find(snapshot, flag_key, wanted, service)
    if found is None:
        return ErrorCode.FLAG_NOT_FOUND, f"no flag {flag_key!r} in the configuration at revision {snapshot.revision}"
    if found.kind not in _KINDS[wanted]:
        return ErrorCode.TYPE_MISMATCH, f"flag {flag_key!r} is of type {found.kind}, not {wanted}"
    return found


def _find(snapshot: Snapshot, flag_key: str, wanted: str, service: str) -> _Found | None:
    if flag_key.startswith("/"):
        # A full key path: an exact schema key this service watches.
        if flag_key not in snapshot.values:
            return None
        spec = SCHEMA.spec_for(flag_key)
        accepted = snapshot.accepted.get(flag_key)
        reason = Reason.STATIC if accepted is not None else Reason.DEFAULT
        return _Found(snapshot.values[flag_key], spec.type, reason, flag_key,
                      accepted.mod_revision if accepted is not None else None)
    if not flag_key or "/" in flag_key:
        return None
    features = _family(snapshot, service, "features")
    experiments = _family(snapshot, service, "experiments")
    # Families are separate name spaces; the resolution type says which one is meant,
    # and a name found only in the other is a type mismatch.
    order = [(experiments, "split"), (features, "bool")] if wanted == "string" else \
        [(features, "bool"), (experiments, "split")]
    for path, kind in order:
        if path is None:
            continue
        accepted = snapshot.accepted.get(path + flag_key)
        if accepted is not None:
            return _Found(accepted.value, kind, Reason.STATIC, path + flag_key, accepted.mod_revision)
    if wanted == "bool" and features is not None:
        # Unset feature: the schema's default, false (see the module docstring).
        return _Found(False, "bool", Reason.DEFAULT, features + flag_key)
    return None


def changed_flags(old: Snapshot, new: Snapshot, service: str) -> list[str]:
    """The flag keys whose resolution may differ between `old` and `new`, sorted."""
    changed = {path for path in old.values.keys() | new.values.keys()
               if old.values.get(path) != new.values.get(path)}
    # An unset feature is false, so setting one to false changes nothing; an unset
    # experiment is absent.
    for label, unset in (("features", False), ("experiments", None)):
        path = _family(new, service, label) or _family(old, service, label)
        if path is None:
            continue
        before, after = old.family(path), new.family(path)
        changed.update(name for name in before.keys() | after.keys()
                       if before.get(name, unset) != after.get(name, unset))
    return sorted(changed)
