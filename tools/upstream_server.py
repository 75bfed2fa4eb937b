"""A real HTTP/1.1 upstream for tests and the bench, with faults on demand.

    python -m tools.upstream_server --port 9000      # echo, until SIGTERM

In a test: `with UpstreamServer() as up: up.mode = "fail"`. Modes:

- `echo` (default): 200 with JSON saying what arrived (method, target, headers in
  order, body as text or base64), plus a few end-to-end and hop-by-hop headers so a
  proxy's filtering shows. A request header `X-Answer-Status: 418` picks the status.
- `fail`: 500 with a JSON body.
- `stall`: holds every request until `release()` (or `stall_seconds`), then echoes.
- `refuse()`: closes the listening socket, so connections are refused; `serve()` opens
  the same port again.

Every request is counted (`requests`) and kept (`received`, the last 1000).
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import signal
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tools.etcd_server import free_port


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the processor's gunicorn
    server_version = "upstream"

    def log_message(self, format, *args) -> None:  # quiet: tests read `received`
        pass

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes: without this, Nagle's algorithm
        # holds the body for the client's delayed ACK (~40 ms a request).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.owner._connections.add(self.connection)

    def finish(self) -> None:
        self.server.owner._connections.discard(self.connection)
        super().finish()

    def _handle(self) -> None:
        owner: UpstreamServer = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        seen = {"peer": self.client_address[1], "method": self.command, "target": self.path, "headers": list(self.headers.items()),
                "body": body.decode("utf-8") if _is_text(body) else None,
                "body_b64": base64.b64encode(body).decode() if not _is_text(body) else None}
        owner._record(seen)
        mode = owner.mode
        if mode == "stall":
            owner._released.wait(owner.stall_seconds)
            mode = owner.mode  # what to answer once released
        if mode == "fail":
            self._send(500, {"error": "injected failure"})
            return
        status = int(self.headers.get("X-Answer-Status") or 200)
        self._send(status, seen, extra=[("X-Upstream", "yes"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                                        ("Keep-Alive", "timeout=5"), ("Connection", "X-Hop"), ("X-Hop", "1"),
                                        ("X-Config-Revision", str(owner.revision)), ("Cache-Control", "max-age=5")])

    def _send(self, status: int, payload: dict, extra: list[tuple[str, str]] = ()) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def __getattr__(self, name: str):
        # Every method is echoed, whatever its name (a proxy must pass them all).
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)


def _is_text(body: bytes) -> bool:
    try:
        body.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


class UpstreamServer:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.mode = "echo"
        self.stall_seconds = 30.0
        self.revision = 0  # sent as X-Config-Revision
        self.requests = 0
        self.received: collections.deque = collections.deque(maxlen=1000)
        self._released = threading.Event()
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _record(self, seen: dict) -> None:
        with self._lock:
            self.requests += 1
            self.received.append(seen)

    def last(self) -> dict:
        return self.received[-1]

    def serve(self) -> "UpstreamServer":
        """Listen (again) on `port` and answer in a background thread."""
        self._released.clear()
        server = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        server.daemon_threads = True
        server.owner = self
        # A connection cut by refuse() is the point of the exercise, not news.
        server.handle_error = lambda request, client_address: None
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"upstream-{self.port}", daemon=True)
        self._thread.start()
        return self

    def refuse(self) -> None:
        """Stop listening: new connections are refused. Open ones are cut too."""
        self.release()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join(5)
        for conn in list(self._connections):  # keep-alive connections too
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def release(self) -> None:
        """Let stalled requests go on."""
        self._released.set()

    def stall(self) -> None:
        self._released.clear()
        self.mode = "stall"

    def close(self) -> None:
        self.refuse()

    def __enter__(self) -> "UpstreamServer":
        return self.serve()

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.upstream_server")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    server = UpstreamServer(args.port).serve()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    signal.signal(signal.SIGINT, lambda *a: stop.set())
    print(f"upstream: {server.url}", flush=True)
    stop.wait()
    server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
