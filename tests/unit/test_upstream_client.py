"""The gateway's HTTP/1.1 client (gateway.upstream) against a scripted server on a real socket.

The server reads each request whole (head, then Content-Length bytes) and writes back
the exact bytes a test scripts, so every way an answer can be framed, or be malformed,
is shown to the client as it would arrive.
"""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest

from gateway import upstream
from gateway.settings import Upstream
from gateway.upstream import Unsendable, UpstreamError, UpstreamPool, request_bytes


class ScriptedServer:
    """Answers the n-th request with `answers[n]` (bytes, or a callable taking the
    connection); `close_after` closes the connection after that answer."""

    def __init__(self, answers, close_after: bool = False) -> None:
        self.answers = list(answers)
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(conn)
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                while len(buf) < length:
                    buf += conn.recv(65536)
                self.requests.append(head + b"\r\n\r\n" + buf[:length])
                buf = buf[length:]
                answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
                if callable(answer):
                    answer(conn)
                else:
                    conn.sendall(answer)
                if self.close_after:
                    conn.close()
                    return
        except OSError:
            return

    def close(self) -> None:
        self._stop = True
        self._listener.close()
        for conn in self._conns:
            conn.close()


@pytest.fixture
def serve():
    servers = []

    def make(*answers, close_after: bool = False):
        server = ScriptedServer(answers, close_after)
        servers.append(server)
        pool = UpstreamPool(Upstream("http", "127.0.0.1", server.port, ""), 4)
        return server, pool

    yield make
    for server in servers:
        server.close()


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_the_request_is_one_piece_with_host_and_length():
    data = request_bytes("POST", "/v1/jobs?rounds=1", "127.0.0.1:8081", b'{"n":1}',
                         {"Content-Type": "application/json", "X-Request-Id": "r1"})
    assert data == (b"POST /v1/jobs?rounds=1 HTTP/1.1\r\nHost: 127.0.0.1:8081\r\n"
                    b"Content-Type: application/json\r\nX-Request-Id: r1\r\nContent-Length: 7\r\n\r\n" b'{"n":1}')
    # No body: none announced, except where the method means one.
    assert b"Content-Length" not in request_bytes("GET", "/v1/x", "h", None, {})
    assert request_bytes("POST", "/v1/x", "h", None, {}).endswith(b"Content-Length: 0\r\n\r\n")


@pytest.mark.parametrize("method,target,headers", [
    ("GE T", "/v1/x", {}), ("GET", "/v1/a b", {}), ("GET", "/v1/\x7f", {}), ("GET", "v1/x", {}),
    ("GET", "/v1/é", {}), ("GET", "/v1/x", {"X-A": "one\r\nX-B: two"}), ("GET", "/v1/x", {"Bad Name": "v"}),
    ("GET", "/v1/x", {"X-A": "snow ☃"}),
])
def test_what_cannot_be_written_is_unsendable(method, target, headers):
    with pytest.raises(Unsendable):
        request_bytes(method, target, "h", None, headers)


def test_a_length_framed_answer_keeps_the_connection(serve):
    server, pool = serve(ok(b"one", b"X-A: 1\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"), ok(b"two"))
    first = pool.request("POST", "/v1/jobs", b"body", {"X-Request-Id": "r"}, 5)
    second = pool.request("GET", "/v1/jobs", None, {}, 5)
    assert (first.status, first.body, second.body) == (200, b"one", b"two")
    assert first.headers == [("Content-Length", "3"), ("X-A", "1"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    assert server.accepted == 1 and pool.opened == 1 and pool.idle == 1
    assert server.requests[0].endswith(b"Content-Length: 4\r\n\r\nbody")
    assert b"\r\nHost: 127.0.0.1:%d\r\n" % server.port in server.requests[0]


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nConnection: x-hop, Close\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi+stray bytes",
])
def test_an_answer_that_ends_the_connection_is_not_reused(serve, answer):
    server, pool = serve(answer)
    assert pool.request("GET", "/v1/x", None, {}, 5).body == b"hi"
    assert pool.idle == 0
    assert pool.request("GET", "/v1/x", None, {}, 5).body == b"hi"
    assert server.accepted == 2


def test_a_chunked_answer_is_decoded_with_extensions_and_trailers(serve):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n1A\r\n" + b"x" * 26 + b"\r\n0\r\nX-Trailer: t\r\n\r\n")
    server, pool = serve(chunked, ok(b"next"))
    answer = pool.request("GET", "/v1/x", None, {}, 5)
    assert answer.body == b"hello" + b"x" * 26
    assert pool.request("GET", "/v1/x", None, {}, 5).body == b"next"
    assert server.accepted == 1


def test_an_answer_in_pieces_is_put_together(serve):
    def trickle(conn):
        for piece in (b"HTTP/1.1 200 OK\r\nContent-", b"Length: 6\r\n", b"\r\nab", b"cd", b"ef"):
            conn.sendall(piece)
            time.sleep(0.01)
    _, pool = serve(trickle)
    assert pool.request("GET", "/v1/x", None, {}, 5).body == b"abcdef"


def test_an_answer_without_length_runs_until_close(serve):
    server, pool = serve(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", close_after=True)
    assert pool.request("GET", "/v1/x", None, {}, 5).body == b"until the end"
    assert pool.idle == 0


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n",
])
def test_answers_without_a_body_read_none(serve, answer):
    server, pool = serve(answer, ok(b"after"))
    assert pool.request("GET", "/v1/x", None, {}, 5).body == b""
    assert pool.request("GET", "/v1/x", None, {}, 5).body == b"after"  # nothing left unread on the connection
    assert server.accepted == 1


def test_head_reads_no_body_whatever_the_length_says(serve):
    server, pool = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", ok(b"after"))
    answer = pool.request("HEAD", "/v1/x", None, {}, 5)
    assert (answer.status, answer.body) == (200, b"")
    assert pool.request("GET", "/v1/x", None, {}, 5).body == b"after"
    assert server.accepted == 1


def test_interim_answers_are_skipped(serve):
    _, pool = serve(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + ok(b"final"))
    answer = pool.request("POST", "/v1/x", b"b", {}, 5)
    assert (answer.status, answer.body) == (200, b"final")


@pytest.mark.parametrize("answer,detail", [
    (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
    (b"HTTP/2 200 OK\r\n\r\n", "status line"),
    (b"HTTP/1.1 099 Low\r\n\r\n", "status line"),
    (b"ICY 200 OK\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n", "header line"),
    (b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", "header line"),
    (b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 0\r\n\r\n", "line break"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "both"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", "differing"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -3\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", "CRLF"),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", "switched"),
    (b"HTTP/1.1 200 OK\r\n" + b"X-Pad: " + b"x" * (70 << 10) + b"\r\n\r\n", "head longer"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;" + b"e" * 5000 + b"\r\nhello\r\n0\r\n\r\n",
     "line too long"),
])
def test_an_answer_that_could_be_read_two_ways_is_broken(serve, answer, detail):
    _, pool = serve(answer)
    with pytest.raises(UpstreamError) as err:
        pool.request("GET", "/v1/x", None, {}, 5)
    assert err.value.kind == "broken" and detail in err.value.detail
    assert pool.idle == 0


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n" + b"x" * 101,
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + b"x" * 64 + b"\r\n40\r\n" + b"x" * 64 + b"\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 200,
])
def test_an_answer_over_the_limit_is_too_large(serve, monkeypatch, answer):
    monkeypatch.setattr(upstream, "MAX_ANSWER_BYTES", 100)
    _, pool = serve(answer, close_after=True)
    with pytest.raises(UpstreamError) as err:
        pool.request("GET", "/v1/x", None, {}, 5)
    assert err.value.kind == "too_large"


@pytest.mark.parametrize("answer,detail", [
    (b"", "without an answer"),
    (b"HTTP/1.1 200 OK\r\nContent-", "before a whole answer head"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "short of the answer"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", "short of the answer"),
])
def test_a_connection_closed_mid_answer_is_broken(serve, answer, detail):
    _, pool = serve(answer, close_after=True)
    with pytest.raises(UpstreamError) as err:
        pool.request("GET", "/v1/x", None, {}, 5)
    assert err.value.kind == "broken" and detail in err.value.detail


def test_the_timeout_is_one_deadline_for_the_whole_answer(serve):
    stop = threading.Event()

    def drip(conn):  # a byte every 50 ms, for ever: each read is quick, the answer never ends
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
        while not stop.wait(0.05):
            try:
                conn.sendall(b"x")
            except OSError:
                return

    _, pool = serve(drip)
    started = time.monotonic()
    try:
        with pytest.raises(UpstreamError) as err:
            pool.request("GET", "/v1/x", None, {}, 0.3)
    finally:
        stop.set()
    assert err.value.kind == "timeout"
    assert time.monotonic() - started < 5  # ended by the deadline, not by the answer


def test_a_refused_connection_is_a_connect_error():
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    pool = UpstreamPool(Upstream("http", "127.0.0.1", port, ""), 4)
    with pytest.raises(UpstreamError) as err:
        pool.request("GET", "/v1/x", None, {}, 2)
    assert err.value.kind == "connect"


def test_a_pooled_connection_the_server_closed_is_not_used(serve):
    server, pool = serve(ok(b"one"), close_after=True)
    assert pool.request("GET", "/v1/x", None, {}, 5).body == b"one"
    assert pool.idle == 1  # the answer said nothing of closing
    # Wait until the server's close has reached the pooled socket (its FIN makes it
    # readable); the next call must notice that before sending, and reconnect.
    (pooled, _), = pool._idle
    assert select.select([pooled], [], [], 5)[0], "the server's close never arrived"
    assert pool.request("GET", "/v1/x", None, {}, 5).body == b"one"
    assert server.accepted == 2 and pool.opened == 2
