"""The etcd adapter: the only module that imports the etcd client.

It speaks etcd's v3 gRPC API through the protobuf stubs of `etcd-sdk-python`
(`pyetcd.etcdrpc`) rather than its high-level watcher, because the watch loop needs
what that watcher hides: a response stream it can wait on with a timeout, progress
requests for liveness, `hasleader` metadata, and precise error codes (compaction,
auth, unavailable). Everything else sees `KeyValue`, `Event` and `WatchBatch`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Callable, Iterator, Sequence

import grpc
from pyetcd import etcdrpc

from ._errors import (  # noqa: F401  (re-exported: the adapter's error kinds)
    AuthError,
    Compacted,
    ConfigurationError,
    EtcdError,
    Unavailable,
    error_for_code,
    refused_user,
)
from ._keyrange import covering_range, prefix_range_end  # noqa: F401  (re-exported for tools)
from ._model import Event, KeyValue, WatchBatch
from ._settings import Endpoint, EndpointCursor, Settings
from ._tls import TlsMaterial

log = logging.getLogger(__name__)

# From these releases on, etcd answers a progress request only after the stream has
# sent every event up to the answer's revision (etcd-io/etcd#15220), and does answer a
# request made while a new watch catches up (etcd-io/etcd#17507): the releases that
# Kubernetes requires before it relies on progress requests. Before them an answer
# can overtake events still being sent.
_ORDERED_PROGRESS = ((3, 4, 31), (3, 5, 13))


def ordered_progress(version: str) -> bool:
    """Whether an etcd server of `version` answers progress requests in stream order."""
    try:
        parts = tuple(int(p) for p in version.split("-")[0].split(".")[:3])
    except ValueError:
        return False
    if len(parts) != 3:
        return False
    if parts[:2] == (3, 4):
        return parts >= _ORDERED_PROGRESS[0]
    return parts >= _ORDERED_PROGRESS[1]


# How much of a gRPC error's message a log line repeats.
_DETAIL_CHARS = 300

def _details(err: grpc.RpcError) -> str:
    try:
        return (err.details() or str(err.code()))[:_DETAIL_CHARS]
    except Exception:  # a bare RpcError without call details
        return str(err)[:_DETAIL_CHARS]


def classify(err: grpc.RpcError) -> EtcdError:
    """Map a gRPC error to the adapter's error kinds."""
    code = err.code() if hasattr(err, "code") else None
    return error_for_code(code.value[0] if code else None, _details(err), code.name if code else "")


def _write_ops(items: dict[str, str | None]) -> list:
    """Transaction operations: a put per value, a delete per None."""
    return [
        etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=key.encode())) if value is None
        else etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key.encode(), value=value.encode()))
        for key, value in items.items()
    ]


class EtcdClient:
    """A connection to the endpoint `cursor` points at.

    `rotate()` moves the cursor on (the watch loop's source moves a shared cursor
    itself); either way the next call connects to the new endpoint. Not thread-safe
    for rotation; list and watch may run from any thread.
    """

    def __init__(self, settings: Settings, cursor: EndpointCursor | None = None,
                 tls: TlsMaterial | None = None) -> None:
        self._settings = settings
        self._cursor = cursor or EndpointCursor(settings.endpoints)
        self._channel: grpc.Channel | None = None
        self._channel_endpoint: Endpoint | None = None
        self._token: str | None = None
        self._lock = threading.Lock()
        self._credentials = self._channel_credentials(tls or TlsMaterial.load(settings)) if settings.secure else None

    @staticmethod
    def _channel_credentials(tls: TlsMaterial) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=tls.cacert, private_key=tls.key,
                                            certificate_chain=tls.cert)

    @property
    def endpoint(self) -> Endpoint:
        return self._cursor.current

    def _options(self) -> list[tuple[str, int]]:
        s = self._settings
        return [
            ("grpc.keepalive_time_ms", int(s.keepalive * 1000)),
            ("grpc.keepalive_timeout_ms", int(s.keepalive_timeout * 1000)),
            # etcd's server policy forbids pings without an active stream.
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.max_pings_without_data", 0),
            # Reconnect within ~1 s of etcd coming back, not gRPC's default 2 min cap.
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.enable_retries", 0),
            # gRPC shares TCP connections between channels to the same target by
            # default; a fresh channel must mean a fresh connection, or the staleness
            # check would reuse the very connection that went silent.
            ("grpc.use_local_subchannel_pool", 1),
        ]

    def _connect(self) -> grpc.Channel:
        stale = None
        with self._lock:
            if self._channel is not None and self._channel_endpoint != self._cursor.current:
                stale, self._channel = self._channel, None  # the cursor moved on
            if self._channel is None:
                endpoint = self._cursor.current
                if self._credentials is not None:
                    self._channel = grpc.secure_channel(endpoint.target, self._credentials, options=self._options())
                else:
                    self._channel = grpc.insecure_channel(endpoint.target, options=self._options())
                self._channel_endpoint = endpoint
                self._token = None
            channel = self._channel
        if stale is not None:
            stale.close()
        return channel

    def rotate(self) -> Endpoint:
        """Drop the connection and move to the next endpoint."""
        self.close()
        return self._cursor.advance()

    def close(self) -> None:
        """Drop the connection; the next call opens a new one."""
        with self._lock:
            channel, self._channel, self._token = self._channel, None, None
        if channel is not None:
            channel.close()

    def _metadata(self, channel: grpc.Channel, timeout: float, require_leader: bool = False):
        md = [("hasleader", "true")] if require_leader else []
        if self._settings.username:
            if self._token is None:
                stub = etcdrpc.AuthStub(channel)
                try:
                    resp = stub.Authenticate(
                        etcdrpc.AuthenticateRequest(name=self._settings.username, password=self._settings.password),
                        timeout=timeout,
                    )
                except grpc.RpcError as err:
                    error = classify(err)
                    if isinstance(error, AuthError):
                        raise refused_user(self._settings.username, error) from None
                    raise error from None
                self._token = resp.token
            md.append(("token", self._token))
        return md

    def _unary(self, call_name: str, stub_cls, request, timeout: float):
        channel = self._connect()
        for attempt in (1, 2):
            metadata = self._metadata(channel, timeout)
            try:
                return getattr(stub_cls(channel), call_name)(request, timeout=timeout, metadata=metadata)
            except grpc.RpcError as err:
                error = classify(err)
                # Simple auth tokens expire after 5 idle minutes: authenticate once more.
                if isinstance(error, AuthError) and "invalid auth token" in str(error) and attempt == 1:
                    self._token = None
                    continue
                raise error from None

    def list_range(self, start: bytes, end: bytes, timeout: float, revision: int = 0) -> tuple[int, list[KeyValue]]:
        """Every key in [start, end) at one revision: (header revision, key-values)."""
        resp = self._unary(
            "Range", etcdrpc.KVStub, etcdrpc.RangeRequest(key=start, range_end=end, revision=revision), timeout
        )
        kvs = [KeyValue(kv.key.decode("utf-8", "replace"), bytes(kv.value), kv.mod_revision, kv.create_revision)
               for kv in resp.kvs]
        return resp.header.revision, kvs

    def put(self, key: str, value: str, timeout: float) -> int:
        resp = self._unary("Put", etcdrpc.KVStub, etcdrpc.PutRequest(key=key.encode(), value=value.encode()), timeout)
        return resp.header.revision

    def delete(self, key: str, timeout: float) -> int:
        resp = self._unary("DeleteRange", etcdrpc.KVStub, etcdrpc.DeleteRangeRequest(key=key.encode()), timeout)
        return resp.header.revision

    def put_many(self, items: dict[str, str | None], timeout: float) -> int:
        """Put (or, for None, delete) several keys in one transaction: one revision."""
        resp = self._unary("Txn", etcdrpc.KVStub, etcdrpc.TxnRequest(success=_write_ops(items)), timeout)
        return resp.header.revision

    def get_at(self, key: str, revision: int, timeout: float) -> KeyValue | None:
        """`key` as it was at `revision` (None if absent then); Compacted if too old."""
        _, kvs = self.list_range(key.encode(), key.encode() + b"\0", timeout, revision=revision)
        return kvs[0] if kvs else None

    def compact(self, revision: int, timeout: float) -> None:
        self._unary("Compact", etcdrpc.KVStub, etcdrpc.CompactionRequest(revision=revision, physical=True), timeout)

    def server_version(self, timeout: float) -> str:
        """The etcd release of the member behind the current connection.

        Maintenance.Status: etcd 3.6 and 3.5.28+ allow it to the root role only, so
        the lister-watcher asks the unauthenticated `/version` first.
        """
        resp = self._unary("Status", etcdrpc.MaintenanceStub, etcdrpc.StatusRequest(), timeout)
        return resp.version

    def watch(self, start: bytes, end: bytes, start_revision: int, on_events: "OnEvents | None" = None,
              ordered_progress: bool = False) -> "WatchStream":
        """A watch from `start_revision`; `on_events` applies each event batch (see
        WatchStream); `ordered_progress`: the member is of a release that answers
        progress requests in stream order (see `ordered_progress()`)."""
        channel = self._connect()
        metadata = self._metadata(channel, self._settings.request_timeout, require_leader=True)
        return WatchStream(etcdrpc.WatchStub(channel), start, end, start_revision, metadata,
                           on_events=on_events, ordered_progress=ordered_progress)


# Applies one response's events (whole revisions, in order) to the caller's state.
OnEvents = Callable[[Sequence[Event]], None]

# How long close() waits for the reader thread to finish; it is cancelled first, so it
# ends at once unless an event batch is being applied.
_READER_JOIN_SECONDS = 2.0


class WatchStream:
    """One gRPC watch stream on one key range, read with timeouts.

    A reader thread takes responses off the connection. Events go to `on_events` on
    that thread (one thread hop less between etcd and the snapshot: hops cost most
    when request threads hold the interpreter lock); every response then goes into a
    queue, so `get(timeout)` can wait for a bounded time: the watch loop must notice
    silence (a stalled or half-open connection) and stop promptly. Without
    `on_events`, `get` returns the events themselves (tools reading a history).
    """

    def __init__(self, stub, start: bytes, end: bytes, start_revision: int, metadata,
                 on_events: OnEvents | None = None, ordered_progress: bool = False) -> None:
        self._requests: queue.Queue = queue.Queue()
        self._responses: queue.Queue = queue.Queue()
        self._closed = False
        # Held while a batch is applied and while closing: once close() returns, no
        # event of this stream is applied any more (reentrant: on_events may close).
        self._deliver_lock = threading.RLock()
        self._on_events = on_events
        # When the oldest unanswered progress request was sent (None: none is out), and
        # how many are out. Answers carry no id, and etcd may drop or merge questions,
        # so an answer settles every question out as of the oldest: never a later time
        # than the truth. Answers still owed to settled questions (`_owed`) prove
        # nothing when they come, or they would be taken for answers to newer ones.
        self._progress_lock = threading.Lock()
        self._progress_asked_at: float | None = None
        self._questions_out = 0
        self._owed = 0
        # The revision up to which this stream has certainly sent every event in its
        # range: the snapshot's revision when it opened, then event batches' headers
        # (and, from servers that order them, progress answers').
        self._delivered = start_revision - 1
        self._ordered_progress = ordered_progress
        create = etcdrpc.WatchCreateRequest(key=start, range_end=end, start_revision=start_revision)
        self._requests.put(etcdrpc.WatchRequest(create_request=create))
        self._call = stub.Watch(self._request_iter(), metadata=metadata)
        self._reader = threading.Thread(target=self._read, name="config-watch-reader", daemon=True)
        self._reader.start()

    def _request_iter(self) -> Iterator:
        while True:
            request = self._requests.get()
            if request is None:
                return
            yield request

    def _read(self) -> None:
        try:
            for response in self._call:
                try:
                    batch = self._batch(response)
                except EtcdError as err:
                    self._responses.put(err)
                    return
                if batch.events and self._on_events is not None:
                    with self._deliver_lock:
                        if self._closed:
                            return
                        self._on_events(batch.events)
                        self._delivered = max(self._delivered, self._complete_through(batch))
                    batch = WatchBatch(batch.header_revision)  # the loop needs only the sign of life
                elif batch.events:
                    self._delivered = max(self._delivered, self._complete_through(batch))
                elif not response.created:
                    batch = self._answered(batch)
                self._responses.put(batch)
            self._responses.put(Unavailable("watch stream ended by the server"))
        except grpc.RpcError as err:
            self._responses.put(classify(err))
        except Exception as exc:  # never let the reader die silently
            log.exception("watch reader failed")
            self._responses.put(EtcdError(f"watch reader failed: {exc!r}"))

    def request_progress(self, asked_at: float | None = None) -> None:
        """Ask etcd to confirm the stream is alive and current; it answers with an empty
        batch stamped `asked_at` (the caller's clock: the watch loop's freshness
        arithmetic uses one clock; time.monotonic() if not given). Sent even while an
        earlier question is out: etcd drops a question on a watch that is still
        catching up, and only a later one gets an answer."""
        if self._closed:
            return
        with self._progress_lock:
            if self._progress_asked_at is None:
                self._progress_asked_at = time.monotonic() if asked_at is None else asked_at
            self._questions_out += 1
        self._requests.put(etcdrpc.WatchRequest(progress_request=etcdrpc.WatchProgressRequest()))

    # etcd sends a catching-up watch at most this many revisions per response, each
    # stamped with its current revision even when more are to come.
    _CATCH_UP_REVISIONS = 1000

    @classmethod
    def _complete_through(cls, batch: WatchBatch) -> int:
        """The revision up to which an event batch certainly completes the stream."""
        revisions = {e.mod_revision for e in batch.events}
        if len(revisions) < cls._CATCH_UP_REVISIONS:
            return batch.header_revision
        return max(revisions)  # possibly a part of a longer catch-up

    def _answered(self, batch: WatchBatch) -> WatchBatch:
        """A progress answer: stamped with when its question left, and whether the
        stream has sent every event up to its revision.

        Servers that order their answers send one only then. Older ones answer at
        once, even while a reconnected stream is still sending its catch-up or its
        compaction notice; for them it holds only when the stream has already
        delivered that revision.
        """
        with self._progress_lock:
            if self._owed:
                self._owed -= 1
                return batch
            asked, self._progress_asked_at = self._progress_asked_at, None
            self._owed += max(0, self._questions_out - 1)
            self._questions_out = 0
        if asked is None:
            return batch
        if self._ordered_progress:
            self._delivered = max(self._delivered, batch.header_revision)
        return batch._replace(asked_at=asked, complete=batch.header_revision <= self._delivered)

    def get(self, timeout: float) -> WatchBatch | None:
        """The next batch, None after `timeout` of silence, or an EtcdError raised."""
        try:
            item = self._responses.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            if self._closed and isinstance(item, Unavailable):
                raise Unavailable("watch stream closed")
            raise item
        return item

    @staticmethod
    def _batch(resp) -> WatchBatch:
        if resp.compact_revision:
            raise Compacted(resp.compact_revision)
        if resp.canceled:
            reason = resp.cancel_reason or "watch canceled by the server"
            if "permission denied" in reason:
                raise AuthError(reason)
            raise Unavailable(reason)
        events = []
        for ev in resp.events:
            kind = "delete" if ev.type == etcdrpc.kv_pb2.Event.DELETE else "put"
            events.append(Event(kind, ev.kv.key.decode("utf-8", "replace"), bytes(ev.kv.value), ev.kv.mod_revision))
        return WatchBatch(resp.header.revision, tuple(events))

    def close(self) -> None:
        """Cancel the stream and wait (bounded) for its reader: after this returns no
        event of this stream is applied. A blocked `get` then raises Unavailable."""
        with self._deliver_lock:  # waits for a batch being applied
            if self._closed:
                return
            self._closed = True
        self._requests.put(None)
        self._call.cancel()
        if threading.current_thread() is not self._reader:
            self._reader.join(_READER_JOIN_SECONDS)



# The operator tool's transactions and sorted reads (config_watch/_audit.py uses them).
# Kept together here, apart from the watch side, and as functions of a client so the
# class itself is unchanged.

def guarded_txn(client: EtcdClient, expect: dict[str, int], ops: dict[str, str | None],
                timeout: float) -> tuple[bool, int]:
    """Put (or, for None, delete) every key of `ops` in one transaction, if and only if
    every key of `expect` still has that mod revision (0: the key is absent).

    Returns (succeeded, revision): the revision the change was committed at, or, when a
    compare failed and nothing was written, etcd's current revision.
    """
    compares = [
        etcdrpc.Compare(result=etcdrpc.Compare.EQUAL, target=etcdrpc.Compare.MOD,
                        key=key.encode(), mod_revision=revision)
        for key, revision in expect.items()
    ]
    resp = client._unary("Txn", etcdrpc.KVStub, etcdrpc.TxnRequest(compare=compares, success=_write_ops(ops)),
                         timeout)
    return resp.succeeded, resp.header.revision


def range_by_revision(client: EtcdClient, start: bytes, end: bytes, timeout: float, *, limit: int = 0,
                      newest_first: bool = True, min_mod_revision: int = 0, max_mod_revision: int = 0,
                      keys_only: bool = False) -> tuple[int, list[KeyValue]]:
    """Keys in [start, end) ordered by mod revision (etcd sorts before it applies
    `limit`), optionally only those last written within [min, max] mod revision."""
    request = etcdrpc.RangeRequest(
        key=start, range_end=end, limit=limit, keys_only=keys_only,
        sort_target=etcdrpc.RangeRequest.MOD,
        sort_order=etcdrpc.RangeRequest.DESCEND if newest_first else etcdrpc.RangeRequest.ASCEND,
        min_mod_revision=min_mod_revision, max_mod_revision=max_mod_revision,
    )
    resp = client._unary("Range", etcdrpc.KVStub, request, timeout)
    kvs = [KeyValue(kv.key.decode("utf-8", "replace"), bytes(kv.value), kv.mod_revision, kv.create_revision)
           for kv in resp.kvs]
    return resp.header.revision, kvs


def oldest_revision(client: EtcdClient, key: bytes, current: int, timeout: float) -> int:
    """The oldest revision etcd still holds (its last compaction), found by bisection:
    etcd reports its compaction point only as an error on reads older than it. Reads
    the single `key`, which the client must be allowed to read."""
    low, high = 1, max(current, 1)
    while low < high:
        middle = (low + high) // 2
        try:
            client.list_range(key, b"", timeout, revision=middle)
        except Compacted:
            low = middle + 1
        else:
            high = middle
    return low
