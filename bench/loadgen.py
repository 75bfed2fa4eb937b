"""A closed-loop HTTP/1.1 load generator: one process, many keep-alive connections.

    python -m bench.loadgen --port 8080 --conns 8 [--duration 5 --start-at T]

Each connection sends `GET <path>` (or `POST <path>` with `--body`), waits for the whole response and sends the next
one at once (no pipelining, no think time). Requests are pre-built bytes and
responses are framed by Content-Length only, so a process costs a few tens of
microseconds of CPU per request and several of them can saturate a Python server
without taking its CPU. The run/launcher in bench/run.py starts several of these
processes (the gateway and the bare handler get exactly the same generator).

The process counts the responses completed in a window — from `--start-at` (a
time.time() value shared by all processes, so their windows coincide) for
`--duration` seconds, or until SIGTERM/SIGINT when no duration is given — then
prints one JSON line: responses, elapsed, statuses, reconnects, errors.

Only the standard library is imported: this runs beside the servers under test.
"""

from __future__ import annotations

import argparse
import errno
import json
import selectors
import signal
import socket
import sys
import time

_stop = False


def _on_signal(signum, frame) -> None:
    global _stop
    _stop = True


class _Conn:
    __slots__ = ("sock", "buf", "fileno")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""
        self.fileno = sock.fileno()


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def _frame(buf: bytes) -> tuple[int, int] | None:
    """(status, total length) of the first complete response in `buf`, else None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end]
    status = int(head[9:12])
    length = 0
    lower = head.lower()
    i = lower.find(b"\r\ncontent-length:")
    if i >= 0:
        j = lower.find(b"\r\n", i + 2)
        length = int(head[i + 17: j if j >= 0 else len(head)])
    total = end + 4 + length
    return (status, total) if len(buf) >= total else None


def run(host: str, port: int, path: str, conns: int, duration: float | None, start_at: float | None,
        body: bytes | None = None) -> dict:
    head = f"{'GET' if body is None else 'POST'} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bench-loadgen\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    request = (head + "Accept: */*\r\n\r\n").encode() + (body or b"")
    sel = selectors.DefaultSelector()
    statuses: dict[int, int] = {}
    counted = 0
    reconnects = 0
    errors = 0
    start_at = time.time() if start_at is None else start_at
    # The window in this process's monotonic clock.
    t0 = time.monotonic() + (start_at - time.time())
    t1 = t0 + duration if duration is not None else float("inf")

    def open_conn() -> None:
        conn = _Conn(_connect(host, port))
        sel.register(conn.sock, selectors.EVENT_READ, conn)
        conn.sock.sendall(request)

    def drop(conn: _Conn) -> None:
        sel.unregister(conn.sock)
        conn.sock.close()

    for _ in range(conns):
        open_conn()
    while not _stop:
        now = time.monotonic()
        if now >= t1:
            break
        for key, _ in sel.select(timeout=0.05):
            conn: _Conn = key.data
            try:
                data = conn.sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:  # the server closed a keep-alive connection: open another
                drop(conn)
                reconnects += 1
                try:
                    open_conn()
                except OSError:
                    errors += 1
                    time.sleep(0.01)
                continue
            conn.buf += data
            frame = _frame(conn.buf)
            if frame is None:
                continue
            status, total = frame
            conn.buf = conn.buf[total:]
            done = time.monotonic()
            if t0 <= done < t1:
                counted += 1
                statuses[status] = statuses.get(status, 0) + 1
            try:
                conn.sock.send(request)
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    errors += 1
                drop(conn)
                reconnects += 1
                open_conn()
    end = min(time.monotonic(), t1)
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    return {
        "responses": counted,
        "elapsed": max(0.0, end - t0),
        "statuses": {str(k): v for k, v in statuses.items()},
        "reconnects": reconnects,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--body", default=None, help="send POST with this JSON body instead of GET")
    parser.add_argument("--conns", type=int, default=8)
    parser.add_argument("--duration", type=float, default=None, help="seconds; default: until SIGTERM")
    parser.add_argument("--start-at", type=float, default=None, help="time.time() at which counting starts")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    result = run(args.host, args.port, args.path, args.conns, args.duration, args.start_at,
                 None if args.body is None else args.body.encode())
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
