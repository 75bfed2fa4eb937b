"""The bench's own clients: a keep-alive HTTP poller, a bare etcd watch, a cold-start probe."""

from __future__ import annotations

import http.client
import socket
import threading
import time

from config_watch._etcd import EtcdClient, EtcdError


class Poller:
    """Requests over one keep-alive connection (reopened once if the server closed it).

    gunicorn's gthread worker drops a keep-alive connection after 2 s idle, so the first
    request after a pause may need a new connection; every timed sample in the bench is
    preceded by an untimed or separately-timed request, so this does not skew them.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._conn: http.client.HTTPConnection | None = None
        self.reconnects = 0

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._conn = conn
        return self._conn

    def get(self, path: str = "/") -> tuple[int, http.client.HTTPMessage, bytes]:
        return self.send("GET", path, headers={"User-Agent": "bench-poller"})

    def send(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request and its whole answer: status, headers, body."""
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                resp = conn.getresponse()
                data = resp.read()
                if resp.will_close:
                    self.close()
                return resp.status, resp.headers, data
            except (http.client.RemoteDisconnected, http.client.BadStatusLine, ConnectionError) as exc:
                self.close()
                self.reconnects += 1
                if attempt == 2:
                    raise exc
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class WatchRecorder:
    """A bare watch on one key in this process: when did each revision's event arrive?

    A consumer thread reads the stream (as the gateway's watcher thread does) and
    stamps every event with time.perf_counter() on arrival.
    """

    def __init__(self, client: EtcdClient, key: str, start_revision: int) -> None:
        start = key.encode()
        self._stream = client.watch(start, start + b"\0", start_revision)
        self._arrivals: dict[int, float] = {}
        self._cond = threading.Condition()
        self._stop = False
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                batch = self._stream.get(timeout=0.2)
            except EtcdError as exc:
                if not self._stop:
                    self.error = f"{type(exc).__name__}: {exc}"
                with self._cond:
                    self._cond.notify_all()
                return
            if batch is None or not batch.events:
                continue
            now = time.perf_counter()
            with self._cond:
                for ev in batch.events:
                    self._arrivals.setdefault(ev.mod_revision, now)
                self._cond.notify_all()

    def wait(self, revision: int, timeout: float) -> float | None:
        """The arrival time of `revision`'s event, or None if it did not come in time."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while revision not in self._arrivals:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.error:
                    return None
                self._cond.wait(remaining)
            return self._arrivals.pop(revision)

    def close(self) -> None:
        self._stop = True
        self._stream.close()
        self._thread.join(2)


def try_connect(port: int, timeout: float = 10.0) -> socket.socket | None:
    """A connection to the port, or None if nothing listens yet."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except (ConnectionRefusedError, ConnectionResetError):
        return None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def request_on(sock: socket.socket, port: int, path: str = "/") -> tuple[int, dict[str, str], bytes] | None:
    """One `Connection: close` request on `sock` (closed after); None if it was reset."""
    with sock:
        try:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except (ConnectionResetError, BrokenPipeError):
            return None
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head:
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def probe_once(port: int, path: str = "/") -> tuple[int, dict[str, str], bytes] | None:
    """One request on a fresh connection; None if nothing listens yet."""
    sock = try_connect(port)
    return None if sock is None else request_on(sock, port, path)
