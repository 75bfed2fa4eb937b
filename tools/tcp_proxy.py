"""A TCP proxy in front of etcd whose faults a test or the chaos run controls.

- `cut()`: closes every connection and refuses new ones (a network cut or a restart).
- `stall()`: existing connections stop forwarding and are never closed (a NAT or
  connector that silently dropped its state); new connections work.
- `heal()`: new connections work again (cut connections stay closed, stalled ones dead).
"""

from __future__ import annotations

import socket
import threading

from tools.etcd_server import free_port


class _Conn:
    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.blackholed = False
        self.closed = False

    def close(self) -> None:
        self.closed = True
        for s in (self.client, self.upstream):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


class TcpProxy:
    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1", port: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = port or free_port()
        self._conns: list[_Conn] = []
        self._lock = threading.Lock()
        self._refusing = False
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self.accepted = 0

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "TcpProxy":
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", self.port))
        self._listener.listen(64)
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self._refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            conn = _Conn(client, upstream)
            with self._lock:
                # A cut that came while this connection was being made covers it too.
                if self._refusing:
                    conn.close()
                    continue
                self._conns.append(conn)
                self.accepted += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(conn, src, dst), daemon=True).start()

    def _pump(self, conn: _Conn, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if conn.blackholed:
                    continue  # swallowed: the peer never hears of it, nor of a close
                dst.sendall(data)
        except OSError:
            pass
        if not conn.blackholed:
            conn.close()

    def cut(self) -> None:
        with self._lock:
            self._refusing = True
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()

    def stall(self) -> None:
        with self._lock:
            for c in self._conns:
                c.blackholed = True

    def heal(self) -> None:
        self._refusing = False

    def close(self) -> None:
        if self._listener:
            self._listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()

    def __enter__(self) -> "TcpProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
