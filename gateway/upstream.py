"""Keep-alive connections to the processor: http.client with a small pool per process.

Why not urllib3 (which the Google libraries bring along): measured against the same
upstream, one forwarded call cost ~500 µs of CPU through urllib3's pool and ~310 µs
through http.client, and the gateway's whole budget is 1.5 ms. What urllib3 adds
beyond http.client (retries, redirects, proxies, a pool per host) the gateway does not
use; what it must keep is here: a LIFO pool, a check that a pooled connection was not
closed by the processor, and a deadline on connect and on every read.

A connection idle longer than `IDLE_SECONDS` is closed rather than reused: gunicorn
(the processor's server) closes keep-alive connections idle for 2 s, and a request
sent on one it is closing at that moment would fail for nothing.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import threading
import time
from typing import NamedTuple

from .settings import Upstream

# Below gunicorn's default keep-alive (2 s), so the gateway, not the processor, ends an idle connection.
IDLE_SECONDS = 1.0
# The most of the processor's answer a worker holds in memory: job results are small
# JSON documents; anything near this is a fault, answered 502.
MAX_ANSWER_BYTES = 16 << 20


class UpstreamError(Exception):
    """The call failed; `kind` says how (and so which status the client gets)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind  # "connect", "timeout", "broken" or "too_large"
        self.detail = detail


class Unsendable(ValueError):
    """The request cannot be written as HTTP (an odd method, target or header): the client's fault."""


class Answer(NamedTuple):
    status: int
    headers: list[tuple[str, str]]  # in order, repeated names kept
    body: bytes


def _dropped(sock: socket.socket) -> bool:
    """Whether the peer closed (or wrote to) an idle connection: readable means either."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class UpstreamPool:
    def __init__(self, upstream: Upstream, size: int, clock=time.monotonic) -> None:
        self.upstream = upstream
        self.size = size
        self._clock = clock
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []  # LIFO: the warmest first
        self._lock = threading.Lock()
        self._context = ssl.create_default_context() if upstream.scheme == "https" else None
        self.opened = 0  # connections opened in this process, for /_status and tests

    @property
    def idle(self) -> int:
        return len(self._idle)

    def _take(self) -> http.client.HTTPConnection | None:
        now = self._clock()
        while True:
            with self._lock:
                if not self._idle:
                    return None
                conn, since = self._idle.pop()
            if now - since <= IDLE_SECONDS and conn.sock is not None and not _dropped(conn.sock):
                return conn
            conn.close()

    def _give(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append((conn, self._clock()))
                return
        conn.close()

    def _open(self, timeout: float) -> http.client.HTTPConnection:
        if self._context is not None:
            conn = http.client.HTTPSConnection(self.upstream.host, self.upstream.port, timeout=timeout,
                                               context=self._context)
        else:
            conn = http.client.HTTPConnection(self.upstream.host, self.upstream.port, timeout=timeout)
        try:
            conn.connect()
        except TimeoutError as exc:
            raise UpstreamError("timeout", f"connect: {exc}") from None
        except OSError as exc:
            raise UpstreamError("connect", f"{type(exc).__name__}: {exc}") from None
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self.opened += 1
        return conn

    def request(self, method: str, target: str, body: bytes | None, headers: dict[str, str],
                timeout: float) -> Answer:
        """One call; UpstreamError if the processor could not be reached or answered
        badly, Unsendable if the request cannot be written."""
        conn = self._take()
        if conn is None:
            conn = self._open(timeout)
        else:
            conn.timeout = timeout
            conn.sock.settimeout(timeout)
        sent = False
        try:
            # Bytes go out with the headers in one send (no Nagle wait for the body).
            conn.request(method, target, body=body, headers=headers)
            sent = True
            response = conn.getresponse()
            data = response.read(MAX_ANSWER_BYTES + 1)
            if len(data) > MAX_ANSWER_BYTES:
                raise UpstreamError("too_large", f"answer longer than {MAX_ANSWER_BYTES} bytes")
            answer = Answer(response.status, response.getheaders(), data)
        except BaseException as exc:
            conn.close()  # mid-request or unread: never reused
            if isinstance(exc, UpstreamError):
                raise
            if not sent and isinstance(exc, ValueError):  # http.client refused to write it
                raise Unsendable(str(exc)) from None
            if isinstance(exc, TimeoutError):
                raise UpstreamError("timeout", f"no answer within {timeout:g} s") from None
            if isinstance(exc, (http.client.HTTPException, OSError, ValueError)):
                raise UpstreamError("broken", f"{type(exc).__name__}: {exc}") from None
            raise
        if response.will_close or not response.isclosed():
            conn.close()
        else:
            self._give(conn)
        return answer

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()
