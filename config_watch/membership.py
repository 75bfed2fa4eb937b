"""This process's membership of its service's fleet: a lease-bound record in etcd.

Every serving process writes `/instances/<service>/<group>.<pid>` bound to a lease
of `INSTANCE_TTL_SECONDS`, and counts the groups among the records (N = live
members; a group is the processes of one instance that share their rate-limit
buckets) with a watcher of its own over that prefix: the same list-then-watch loop as the configuration's, kept
apart so that membership trouble (a role without the right to the prefix, say) can
never cost the configuration its watch. A process that stops, is killed or stops
serving drops out when its lease runs out.

Renewal is driven by requests, not by a timer: Cloud Run throttles the CPU between
requests, so a timer thread may sleep through its deadline, while a process that
serves nothing should drop out anyway (it takes none of the traffic). A request that
finds the lease older than a third of its TTL wakes one helper thread that renews it
(the request itself never waits on etcd), so a lease gets two more chances before it
lapses. Renewal is a keepalive, which creates no revision and no watch event: members
cost etcd a write when they join and when they leave, not while they live.

A renewal or registration that fails (etcd down, permission refused) is logged and
retried on later requests; the service keeps serving with the last known N.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from typing import Any, Callable, Mapping

from ._errors import EtcdError, Unavailable
from ._etcd_json import JsonGatewayClient
from ._schema import SCHEMA, instances_prefix
from ._settings import EndpointCursor, Settings
from ._source import EtcdSource
from ._watcher import ConfigWatcher

log = logging.getLogger(__name__)

# A lease is renewed once it has run this share of its TTL: two more tries fit before it lapses.
RENEW_FRACTION = 1 / 3
# After a failed try the next waits 1, 2, 4 ... seconds, at most the renewal interval.
FIRST_RETRY_SECONDS = 1.0
# A streak of failures is logged at its start and then at most this often.
FAILURE_LOG_INTERVAL = 60.0


def new_group() -> str:
    """Host, pid and a random tail: readable in `etcdctl get`, unique across restarts."""
    host = "".join(c if c.isalnum() or c == "-" else "-" for c in socket.gethostname())[:48] or "host"
    return f"{host}-{os.getpid()}-{secrets.token_hex(4)}"


def member_group(member_id: str) -> str:
    """The group of a member id (`<group>.<pid>`): the processes of one instance, which
    share their buckets and so count as one member of the fleet."""
    group, dot, pid = member_id.rpartition(".")
    return group if dot and pid.isdigit() else member_id


class Membership:
    """This process's lease-bound record under `/instances/<service>/`."""

    def __init__(self, settings: Settings, service: str, *, client: JsonGatewayClient | None = None,
                 clock: Callable[[], float] = time.monotonic, watch: bool = True, group: str | None = None) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.ttl = settings.instance_ttl
        self.prefix = instances_prefix(service)
        # The processes that count as one member (the gateway's workers of one
        # instance, which share one bucket table); by default this process alone.
        self.group = group or new_group()
        self.member_id = f"{self.group}.{self.pid}"
        self.key = self.prefix + self.member_id
        # Made by the helper on first use: unreadable TLS files are then a logged
        # failure to register, never an error in a request.
        self._client = client
        # The endpoint registrations go to; moved on after an endpoint fails.
        self._cursor = EndpointCursor(settings.endpoints)
        self._clock = clock
        self._record = json.dumps({"host": socket.gethostname(), "pid": self.pid,
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
                                  separators=(",", ":"))
        self._lease_id: int | None = None
        # The revision of our last put: a snapshot at or after it must list us.
        self._put_revision = 0
        self._need_put = False
        # Monotonic time the lease was last granted or renewed (when that call was sent).
        self.renewed_at: float | None = None
        # No renewal is started before this time (one comparison on the request path).
        self._due_at = 0.0
        self._retry_gap = FIRST_RETRY_SECONDS
        self._wake = threading.Event()
        self._stopped = False
        # Exactly one of close() and a registration in flight revokes the new lease.
        self._lease_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self.last_error: str | None = None
        self._failing_since: float | None = None
        self._failure_logged_at = -math.inf
        self.counters = {"registrations": 0, "renewals": 0, "failures": 0}
        prefixes = [self.prefix]
        # The live members, watched (not started by `watch=False`: tests and the bench).
        self.watcher = ConfigWatcher(lambda: EtcdSource(settings, prefixes), prefixes, settings,
                                     applied_log_level=logging.DEBUG)
        self._watch = watch
        # Until this moment the first count waits for the first list; after it, none does.
        self._cold_start_deadline = clock() + settings.initial_wait

    def start(self) -> "Membership":
        if self._watch:
            self.watcher.start()
        return self

    def _listed(self):
        """The member list in force (a snapshot of the membership family).

        Never checked against etcd on the request path: a count a few seconds old
        costs a little accuracy, a check would cost the request time. Only the first
        requests of a process wait (within CONFIG_INITIAL_WAIT_SECONDS of its start)
        for the first list, so they do not take the whole limit for themselves.
        """
        watcher = self.watcher
        if not watcher.synced:
            remaining = self._cold_start_deadline - self._clock()
            if remaining > 0:
                watcher.wait_synced(remaining)
        return watcher.store.current

    def members(self) -> Mapping[str, Any]:
        """The live members' records by id, as last listed or watched."""
        return self._listed().family(self.prefix)

    # --- request path ------------------------------------------------------------

    def serve(self) -> Mapping[str, Any]:
        """What every served request calls: renews when due (never on the request's
        time) and returns the live members, read from one snapshot."""
        listed = self._listed()
        members = listed.family(self.prefix)
        self.touch(members, listed.revision)
        return members

    def touch(self, members: Mapping[str, Any] | None = None, revision: int = 0) -> None:
        """Called by every served request: renews in the background when due.

        `members` and `revision` are the request's snapshot of the membership family:
        if it should list this process and does not (the record was deleted, or etcd
        was restored from a backup), the record is written again.
        """
        if members is not None and self._put_revision and revision >= self._put_revision \
                and self.member_id not in members and not self._need_put:
            self._need_put = True
            self._due_at = 0.0
        if self._clock() < self._due_at or self._stopped:
            return
        self._due_at = math.inf  # until the helper has tried
        if self._worker is None:
            self._start_worker()
        self._wake.set()

    def count(self, members: Mapping[str, Any] | None = None) -> int:
        """Live members N: the groups among the records listed (the instances), plus
        this process's group if none of its records is listed (not registered yet, or
        refused): it serves, so it takes a share."""
        members = self.members() if members is None else members
        groups = {member_group(member) for member in members}
        return len(groups) + (0 if self.group in groups else 1)

    def lease_age(self) -> float | None:
        """Seconds since the lease was last granted or renewed (None: never)."""
        return None if self.renewed_at is None else max(0.0, self._clock() - self.renewed_at)

    def status(self, details: bool = False) -> dict:
        """Membership for /_status; error text only with `details` (STATUS_DETAILS), as
        for the configuration watcher: without, just the kind of error."""
        age = self.lease_age()
        watch = self.watcher.status().to_json(details)
        error = self.last_error if details or self.last_error is None else self.last_error.split(":", 1)[0]
        return {
            "member_id": self.member_id,
            "group": self.group,
            "key": self.key,
            "registered": self._lease_id is not None and age is not None and age < self.ttl,
            "lease_ttl_seconds": self.ttl,
            "lease_age_seconds": None if age is None else round(age, 3),
            "last_error": error,
            "counters": dict(self.counters),
            "members_watch": {name: watch.get(name) for name in
                              ("state", "revision", "synced", "connected", "staleness_seconds", "last_error")},
        }

    # --- the helper thread -------------------------------------------------------

    def _start_worker(self) -> None:
        with self._worker_lock:
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="membership-renew", daemon=True)
                self._worker.start()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait()
            self._wake.clear()
            if self._stopped:
                return
            try:
                self.renew()
            except Exception:  # never let the helper die: the next request tries again
                log.exception("membership renewal failed unexpectedly", extra={"json_fields": {"key": self.key}})
                self._due_at = self._clock() + self._retry_gap

    def renew(self) -> None:
        """Renew the lease (or register afresh); on failure, schedule the next try."""
        asked_at = self._clock()
        timeout = self.settings.request_timeout
        try:
            if self._client is None:
                self._client = JsonGatewayClient(self.settings, self._cursor)
            lease_id = self._lease_id  # read once: close() may clear it meanwhile
            if lease_id is not None:
                self.counters["renewals"] += 1
                if self._client.lease_keepalive(lease_id, timeout) > 0:
                    if self._need_put:
                        self._put_revision = self._client.put(self.key, self._record, timeout, lease_id)
                        self._need_put = False
                        log.warning("membership record was missing; written again",
                                    extra={"json_fields": {"key": self.key, "revision": self._put_revision}})
                    self._succeeded(asked_at)
                    return
                if self._stopped:  # revoked by close() meanwhile, not run out
                    return
                # The lease ran out (a freeze longer than its TTL): etcd deleted the record.
                log.warning("membership lease had expired; registering again",
                            extra={"json_fields": {"key": self.key, "ttl_seconds": self.ttl}})
                self._lease_id = None
            self._register(asked_at, timeout)
        except EtcdError as exc:
            if not self._stopped:  # after close() a failure is neither retried nor news
                self._failed(exc)

    def _register(self, asked_at: float, timeout: float) -> None:
        if self._stopped:
            return
        lease_id, granted = self._client.lease_grant(max(1, math.ceil(self.ttl)), timeout)
        if self._stopped:  # closed during the grant: no record is written
            self._revoke_quietly(lease_id)
            return
        try:
            put_revision = self._client.put(self.key, self._record, timeout, lease_id)
        except EtcdError:
            self._revoke_quietly(lease_id)
            raise
        with self._lease_lock:
            stopped = self._stopped
            if not stopped:
                self._lease_id = lease_id
        if stopped:  # closed during the put: leave at once, as close() would have
            self._revoke_quietly(lease_id)
            return
        self._put_revision = put_revision
        self._need_put = False
        self.counters["registrations"] += 1
        self._succeeded(asked_at)
        log.info("registered as a member", extra={"json_fields": {
            "key": self.key, "revision": put_revision, "lease_ttl_seconds": granted}})

    def _succeeded(self, asked_at: float) -> None:
        self.renewed_at = asked_at
        self.last_error = None
        self._retry_gap = FIRST_RETRY_SECONDS
        if self._failing_since is not None:
            log.info("membership renewals work again", extra={"json_fields": {
                "key": self.key, "failed_for_seconds": round(self._clock() - self._failing_since, 1)}})
            self._failing_since = None
        self._due_at = asked_at + self.ttl * RENEW_FRACTION

    def _failed(self, exc: EtcdError) -> None:
        now = self._clock()
        self.counters["failures"] += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, Unavailable):
            self._cursor.advance()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._failure_logged_at >= FAILURE_LOG_INTERVAL:
            self._failure_logged_at = now
            log.warning("membership registration or renewal failed; serving with the last known member count",
                        extra={"json_fields": {"key": self.key, "error": self.last_error,
                                               "retry_in_seconds": self._retry_gap}})
        self._due_at = now + self._retry_gap
        self._retry_gap = min(self._retry_gap * 2, self.ttl * RENEW_FRACTION)

    def _revoke_quietly(self, lease_id: int) -> None:
        if self._client is None:
            return
        try:
            self._client.lease_revoke(lease_id, self.settings.check_timeout)
        except EtcdError:
            pass  # it lapses by itself within its TTL

    def close(self) -> None:
        """Leave the fleet now (revoke the lease) instead of at its expiry; returns once
        a call in flight has ended too (bounded), so an exit right after leaks no lease."""
        if os.getpid() != self.pid:  # a forked child: the lease and the lock are the parent's
            self._stopped = True
            return
        with self._lease_lock:
            self._stopped = True
            lease_id, self._lease_id = self._lease_id, None
        self._wake.set()
        self.watcher.stop(timeout=1.0)
        if lease_id is not None:
            self._revoke_quietly(lease_id)
            log.info("left the fleet", extra={"json_fields": {"key": self.key}})
        worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            # A grant and a put, or a keepalive and a put, then a revoke.
            worker.join(2 * self.settings.request_timeout + self.settings.check_timeout)


# This process's membership, the runtime it belongs to, or None before the first request.
_membership: Membership | None = None
_membership_runtime: object | None = None
# Guards creation of `_membership` (double-checked: the fast path takes no lock).
_membership_lock = threading.Lock()


def get_membership(runtime, group: str | None = None) -> Membership | None:
    """The membership of this process for `runtime`'s service (None if the service
    keeps no membership), made on first call, anew after a fork or a new runtime.
    `group`: the processes this one counts as one member with (see `Membership`);
    read on the first call only."""
    global _membership, _membership_runtime
    current = _membership
    if current is not None and _membership_runtime is runtime and current.pid == os.getpid():
        return current
    if not SCHEMA.member_prefixes(runtime.settings.service):
        return None
    with _membership_lock:
        current = _membership
        if current is None or _membership_runtime is not runtime or current.pid != os.getpid():
            if current is not None and current.pid == os.getpid():
                threading.Thread(target=current.close, name="membership-close", daemon=True).start()
            current = Membership(runtime.settings, runtime.settings.service, group=group).start()
            _membership, _membership_runtime = current, runtime
    return current


def reset_membership() -> None:
    """Leave the fleet and forget the membership (tests, and process exit)."""
    global _membership, _membership_runtime
    with _membership_lock:
        current, _membership, _membership_runtime = _membership, None, None
    if current is not None and current.pid == os.getpid():
        current.close()


# A clean exit (gunicorn stopping a worker) leaves at once; a killed process lapses with its lease.
atexit.register(reset_membership)
