"""The lister-watcher the watch loop uses: one key range of one etcd cluster.

Lists (the first one, relists, staleness checks) go through etcd's JSON gateway; the
watch goes over gRPC, imported on first use, once the first snapshot is out.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from ._errors import EtcdError, GatewayRefused, Unavailable
from ._etcd_json import JsonGatewayClient
from ._keyrange import covering_range
from ._model import Event
from ._settings import EndpointCursor, Settings
from ._tls import TlsMaterial

log = logging.getLogger(__name__)


class EtcdSource:
    """Lists, checks and watches the range covering `prefixes`, on one endpoint at a time.

    `tls`: the material loaded when the runtime was made (loaded here if not given, so
    a missing file raises a ConfigurationError from the constructor).
    """

    def __init__(self, settings: Settings, prefixes: list[str], tls: TlsMaterial | None = None) -> None:
        self._settings = settings
        self._start, self._end = covering_range(prefixes)
        self._tls = tls if tls is not None or not settings.secure else TlsMaterial.load(settings)
        # Where every transport of this source connects: moved on by rotate().
        self._cursor = EndpointCursor(settings.endpoints)
        self._json = JsonGatewayClient(settings, self._cursor, self._tls)
        self._grpc = None  # an EtcdClient, made by the first watch
        # Set once the JSON gateway refuses this client: lists then go over gRPC too.
        self._lists_over_grpc = False
        # The release of the member the current watch reads from (None: not known).
        self.server_version: str | None = None
        self._version_unknown_logged = False

    @property
    def endpoint(self) -> str:
        return str(self._cursor.current)

    def _json_list(self, timeout: float):
        try:
            return self._json.list_range(self._start, self._end, timeout)
        except GatewayRefused as exc:
            self._lists_over_grpc = True
            log.warning(
                "etcd's JSON gateway refused this client; listing over gRPC instead "
                "(a client certificate without a Common Name avoids the slower cold start)",
                extra={"json_fields": {"error": str(exc)}},
            )
            return None

    def list(self, timeout: float):
        return self._list(timeout, fresh_connection=False)

    def check(self, timeout: float):
        # A new connection per call, so never the one that may have gone silent.
        return self._list(timeout, fresh_connection=True)

    def _list(self, timeout: float, fresh_connection: bool):
        # Both transports read linearizably (etcd's default): a revision below one seen
        # before proves the store was restored, which the watch loop relies on.
        if not self._lists_over_grpc:
            result = self._json_list(timeout)  # a new connection every call anyway
            if result is not None:
                return result
        if not fresh_connection:
            return self._client().list_range(self._start, self._end, timeout)
        from ._etcd import EtcdClient

        client = EtcdClient(self._settings, self._cursor, self._tls)
        try:
            return client.list_range(self._start, self._end, timeout)
        finally:
            client.close()

    def _client(self):
        if self._grpc is None:
            from ._etcd import EtcdClient  # imports gRPC: after the first list, not before

            self._grpc = EtcdClient(self._settings, self._cursor, self._tls)
        return self._grpc

    def watch(self, start_revision: int, on_events: Callable[[Sequence[Event]], None]):
        """A stream from `start_revision` whose reader applies every event batch through
        `on_events` before it hands the response's sign of life to `get`."""
        client = self._client()
        from ._etcd import ordered_progress

        # Asked for every watch: behind a name or a load balancer, a reconnect can
        # reach another member, of another release in the middle of an upgrade.
        self.server_version = self._version(client)
        ordered = self.server_version is not None and ordered_progress(self.server_version)
        return client.watch(self._start, self._end, start_revision, on_events=on_events, ordered_progress=ordered)

    def _version(self, client) -> str | None:
        # Not knowing is always safe (answers are then taken as unordered), so this
        # must never hold up the watch: a short deadline, and no second try at a member
        # that cannot be reached (the watch itself will find that out and move on).
        timeout = self._settings.check_timeout
        errors = []
        for ask in (self._json.version, client.server_version):
            try:
                return ask(timeout)
            except Unavailable:
                return None
            except EtcdError as exc:  # answered, but not with a version: ask the other way
                errors.append(str(exc))
        if not self._version_unknown_logged:
            self._version_unknown_logged = True
            log.warning("etcd's version is unknown; its progress answers are taken as unordered "
                        "(a request may pay a check more often)",
                        extra={"json_fields": {"errors": errors}})
        return None

    def rotate(self) -> str:
        """Move every transport to the next endpoint (the gRPC channel reconnects on its next call)."""
        self._cursor.advance()
        if self._grpc is not None:
            self._grpc.close()
        return self.endpoint

    def close(self) -> None:
        """Drop the gRPC connection; the next watch or list opens a new one."""
        if self._grpc is not None:
            self._grpc.close()
