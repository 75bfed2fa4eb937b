"""Keep-alive connections to the processor: a small HTTP/1.1 client with a pool per process.

Why not a library. Measured against the same upstream on this project's 2-core test
machine, one call cost ~500 µs of CPU through urllib3's pool, ~320 µs through
http.client and ~70 µs written out here, and the gateway's whole budget is 1.5 ms.
http.client's cost is its response parser (the email package's) and two sends per
request (head, then body: two trips through the kernel's TCP path). What the gateway
needs is small: one request at a time on a connection, one send of head and body,
the answer framed as RFC 9112 section 6.3 says (Content-Length, chunked, or until
close), and strictness wherever an answer could be read two ways (both
Transfer-Encoding and Content-Length, differing lengths, folded or malformed header
lines, line breaks inside a value): such an answer is a 502, never guessed at.

A connection idle longer than `IDLE_SECONDS` is closed rather than reused: gunicorn
(the processor's server) closes keep-alive connections idle for 2 s, and a request
sent on one it is closing at that moment would fail for nothing. A pooled connection
is also checked, before reuse, for having been closed by the processor.

The timeout is one deadline for the whole call: connecting, sending, and the whole
answer, so an upstream trickling bytes cannot hold a request past it.
"""

from __future__ import annotations

import re
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
# The status line and headers of an answer (gunicorn refuses request heads over ~8 KiB; this is generous).
MAX_HEAD_BYTES = 64 << 10
# One chunk-size line or trailer line of a chunked answer.
MAX_LINE_BYTES = 4096
_RECV_BYTES = 64 << 10

# An HTTP token (a method, a header name), as text and as bytes.
TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_TOKEN_BYTES_RE = re.compile(TOKEN_RE.pattern.encode())
# What a header value may not carry (in a request, or an answer), and a request target.
BAD_VALUE_RE = re.compile(r"[\r\n\x00]")
_BAD_VALUE_BYTES_RE = re.compile(BAD_VALUE_RE.pattern.encode())
_BAD_TARGET_RE = re.compile(r"[\x00-\x20\x7f]")
_HEX = frozenset(b"0123456789abcdefABCDEF")
# Methods whose request has a body by meaning: sent with Content-Length: 0 when empty.
_BODY_EXPECTED = frozenset({"POST", "PUT", "PATCH"})


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


def _broken(detail: str) -> UpstreamError:
    return UpstreamError("broken", detail)


def _dropped(sock: socket.socket) -> bool:
    """Whether the peer closed (or wrote to) an idle connection: readable means either."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


def request_bytes(method: str, target: str, host: str, body: bytes | None, headers: dict[str, str]) -> bytes:
    """The request as it goes on the wire, head and body in one piece (Unsendable if it cannot)."""
    if not TOKEN_RE.fullmatch(method):
        raise Unsendable(f"method {method[:40]!r} is not an HTTP token")
    if not target.startswith("/") or not target.isascii() or _BAD_TARGET_RE.search(target):
        raise Unsendable("request target must be printable ASCII starting with '/'")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers.items():
        if not TOKEN_RE.fullmatch(name) or BAD_VALUE_RE.search(value):
            raise Unsendable(f"header {name[:40]!r} cannot be sent")
        lines.append(f"{name}: {value}")
    if body is not None:
        lines.append(f"Content-Length: {len(body)}")
    elif method in _BODY_EXPECTED:
        lines.append("Content-Length: 0")
    lines.append("\r\n")
    try:
        head = "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError:
        raise Unsendable("a header value is not latin-1 text") from None
    return head + body if body else head


class _Reader:
    """Bytes from one connection until a deadline, buffered: what an answer is read from."""

    __slots__ = ("sock", "deadline", "buf", "pos", "closed")

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buf = b""
        self.pos = 0
        self.closed = False  # the peer closed its side

    def fill(self) -> bool:
        """Read what has arrived (waiting until the deadline); False at the end of the stream."""
        if self.closed:
            return False
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline passed")
        self.sock.settimeout(remaining)
        data = self.sock.recv(_RECV_BYTES)
        if not data:
            self.closed = True
            return False
        self.buf = self.buf[self.pos:] + data if self.pos else self.buf + data
        self.pos = 0
        return True

    def _until(self, delimiter: bytes, limit: int, too_long: str, closed: str, closed_empty: str) -> bytes:
        """The bytes before `delimiter` (which is consumed); broken past `limit` or at the end of the stream."""
        while True:
            end = self.buf.find(delimiter, self.pos)
            if end - self.pos > limit:  # found or not, too long already
                raise _broken(too_long)
            if end >= 0:
                data = self.buf[self.pos:end]
                self.pos = end + len(delimiter)
                return data
            if len(self.buf) - self.pos > limit:
                raise _broken(too_long)
            if not self.fill():
                raise _broken(closed if len(self.buf) > self.pos else closed_empty)

    def head(self) -> bytes:
        """Up to the blank line that ends a message head."""
        return self._until(b"\r\n\r\n", MAX_HEAD_BYTES, f"answer head longer than {MAX_HEAD_BYTES} bytes",
                           "connection closed before a whole answer head", "connection closed without an answer")

    def line(self) -> bytes:
        return self._until(b"\r\n", MAX_LINE_BYTES, "chunked answer: line too long",
                           "connection closed inside a chunked answer", "connection closed inside a chunked answer")

    def exact(self, n: int) -> bytes:
        while len(self.buf) - self.pos < n:
            if not self.fill():
                raise _broken(f"connection closed {n - (len(self.buf) - self.pos)} bytes short of the answer")
        data = self.buf[self.pos:self.pos + n]
        self.pos += n
        return data

    def rest(self, limit: int) -> bytes:
        """Everything until the peer closes (at most `limit` bytes, else too_large)."""
        while self.fill():
            if len(self.buf) - self.pos > limit:
                break
        if len(self.buf) - self.pos > limit:
            raise UpstreamError("too_large", f"answer longer than {limit} bytes")
        data = self.buf[self.pos:]
        self.pos = len(self.buf)
        return data

    def leftover(self) -> bool:
        """Whether bytes arrived beyond the answer (the connection cannot be trusted again)."""
        return len(self.buf) > self.pos


def _parse_head(head: bytes) -> tuple[bool, int, list[tuple[str, str]]]:
    """(HTTP/1.1?, status, headers) of an answer head; UpstreamError("broken") if malformed."""
    status_line, _, rest = head.partition(b"\r\n")
    version, _, tail = status_line.partition(b" ")
    code = tail[:3]
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit() \
            or tail[3:4] not in (b"", b" ") or code[0:1] == b"0":
        raise _broken(f"malformed status line {status_line[:60]!r}")
    headers = []
    if rest:
        for line in rest.split(b"\r\n"):
            name, colon, value = line.partition(b":")
            # A folded line starts with a space, which no token holds: refused with the rest.
            if not colon or not _TOKEN_BYTES_RE.fullmatch(name):
                raise _broken(f"malformed header line {line[:60]!r}")
            value = value.strip(b" \t")
            if _BAD_VALUE_BYTES_RE.search(value):
                raise _broken(f"header {name[:40]!r} holds a line break or NUL")
            headers.append((name.decode("ascii"), value.decode("latin-1")))
    return version == b"HTTP/1.1", int(code), headers


def _content_length(values: list[str]) -> int:
    lengths = {part.strip() for value in values for part in value.split(",")}
    if len(lengths) != 1:
        raise _broken(f"answer with differing Content-Length values {sorted(lengths)[:4]}")
    (text,) = lengths
    if not text.isdigit() or not text.isascii():
        raise _broken(f"answer with Content-Length {text[:20]!r}")
    return int(text)


def _chunked(reader: _Reader) -> bytes:
    parts = []
    size_total = 0
    while True:
        size_text = reader.line().split(b";", 1)[0].strip(b" \t")
        if not size_text or not _HEX.issuperset(size_text) or len(size_text) > 16:
            raise _broken(f"chunked answer: bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if size == 0:
            break
        size_total += size
        if size_total > MAX_ANSWER_BYTES:
            raise UpstreamError("too_large", f"answer longer than {MAX_ANSWER_BYTES} bytes")
        parts.append(reader.exact(size))
        if reader.exact(2) != b"\r\n":
            raise _broken("chunked answer: chunk not followed by CRLF")
    trailer_bytes = 0
    while True:  # trailers: read and dropped (the gateway passes none on)
        line = reader.line()
        if not line:
            return b"".join(parts)
        trailer_bytes += len(line)
        if trailer_bytes > MAX_HEAD_BYTES:
            raise _broken("chunked answer: trailers too long")


def exchange(sock: socket.socket, request: bytes, head_only: bool, deadline: float) -> tuple[Answer, bool]:
    """Send one request and read its answer: (the answer, whether the connection may be reused)."""
    sock.settimeout(max(0.0, deadline - time.monotonic()) or 1e-6)
    sock.sendall(request)
    reader = _Reader(sock, deadline)
    while True:
        keep_alive, status, headers = _parse_head(reader.head())
        if status >= 200:
            break
        if status == 101:
            raise _broken("the upstream switched protocols")
        # 1xx: interim, the final answer follows.
    transfer_encoding, lengths, connection = None, [], ""
    for name, value in headers:
        lower = name.lower()
        if lower == "transfer-encoding":
            transfer_encoding = value if transfer_encoding is None else transfer_encoding + "," + value
        elif lower == "content-length":
            lengths.append(value)
        elif lower == "connection":
            connection += "," + value
    if connection and "close" in {token.strip().lower() for token in connection.split(",")}:
        keep_alive = False
    if head_only or status in (204, 304):
        body = b""
    elif transfer_encoding is not None:
        if lengths:
            raise _broken("answer with both Transfer-Encoding and Content-Length")
        codings = [coding.strip().lower() for coding in transfer_encoding.split(",")]
        if codings[-1] == "chunked":
            body = _chunked(reader)
        else:  # another coding last: the answer ends when the connection does
            body = reader.rest(MAX_ANSWER_BYTES)
            keep_alive = False
    elif lengths:
        length = _content_length(lengths)
        if length > MAX_ANSWER_BYTES:
            raise UpstreamError("too_large", f"answer of {length} bytes, over {MAX_ANSWER_BYTES}")
        body = reader.exact(length)
    else:
        body = reader.rest(MAX_ANSWER_BYTES)
        keep_alive = False
    return Answer(status, headers, body), keep_alive and not reader.leftover() and not reader.closed


class UpstreamPool:
    def __init__(self, upstream: Upstream, size: int, clock=time.monotonic) -> None:
        self.upstream = upstream
        self.size = size
        self._clock = clock
        self._idle: list[tuple[socket.socket, float]] = []  # LIFO: the warmest first
        self._lock = threading.Lock()
        self._context = ssl.create_default_context() if upstream.scheme == "https" else None
        default_port = 443 if upstream.scheme == "https" else 80
        host = f"[{upstream.host}]" if ":" in upstream.host else upstream.host
        self._host_header = host if upstream.port == default_port else f"{host}:{upstream.port}"
        self.opened = 0  # connections opened in this process, for /_status and tests

    @property
    def idle(self) -> int:
        return len(self._idle)

    def _take(self) -> socket.socket | None:
        now = self._clock()
        while True:
            with self._lock:
                if not self._idle:
                    return None
                sock, since = self._idle.pop()
            if now - since <= IDLE_SECONDS and not _dropped(sock):
                return sock
            sock.close()

    def _give(self, sock: socket.socket) -> None:
        with self._lock:
            if len(self._idle) < self.size:
                self._idle.append((sock, self._clock()))
                return
        sock.close()

    def _open(self, deadline: float) -> socket.socket:
        try:
            sock = socket.create_connection((self.upstream.host, self.upstream.port),
                                            timeout=max(1e-6, deadline - time.monotonic()))
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._context is not None:
                    sock = self._context.wrap_socket(sock, server_hostname=self.upstream.host)
            except BaseException:
                sock.close()
                raise
        except TimeoutError as exc:
            raise UpstreamError("timeout", f"connect: {exc}") from None
        except OSError as exc:
            raise UpstreamError("connect", f"{type(exc).__name__}: {exc}") from None
        with self._lock:
            self.opened += 1
        return sock

    def request(self, method: str, target: str, body: bytes | None, headers: dict[str, str],
                timeout: float) -> Answer:
        """One call, within `timeout` seconds in all; UpstreamError if the processor could
        not be reached or answered badly, Unsendable if the request cannot be written."""
        deadline = time.monotonic() + timeout
        data = request_bytes(method, target, self._host_header, body, headers)
        sock = self._take()
        if sock is None:
            sock = self._open(deadline)
        try:
            answer, reusable = exchange(sock, data, method == "HEAD", deadline)
        except BaseException as exc:
            sock.close()  # mid-request or unread: never reused
            if isinstance(exc, UpstreamError):
                raise
            if isinstance(exc, TimeoutError):
                raise UpstreamError("timeout", f"no answer within {timeout:g} s") from None
            if isinstance(exc, OSError):
                raise _broken(f"{type(exc).__name__}: {exc}") from None
            raise
        if reusable:
            self._give(sock)
        else:
            sock.close()
        return answer

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock, _ in idle:
            sock.close()
