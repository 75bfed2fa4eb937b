"""Forwarding `/v1/` calls to the data processor: the request as a proxy should pass it,
the answer as the processor gave it, behind the circuit breaker.

Connections are kept alive in a pool per worker process (`upstream.UpstreamPool`, made
on first use and anew after a fork: see `_process`).
"""

from __future__ import annotations

import logging
import re
import urllib.parse
import uuid

import flask

from config_watch import BREAKER_FAILURES, BREAKER_HALF_OPEN_SUCCESSES, BREAKER_OPEN_SECONDS, UPSTREAM_TIMEOUT_MS

from .breaker import CircuitBreaker, Refusal, Thresholds
from .responses import json_response
from .settings import GatewaySettings
from .upstream import BAD_VALUE_RE, TOKEN_RE, Answer, Unsendable, UpstreamError, UpstreamPool

log = logging.getLogger(__name__)

# What the client is told for each way a call can fail.
_FAILURES = {"connect": (502, "upstream connection failed"), "broken": (502, "upstream connection failed"),
             "too_large": (502, "upstream answer too large"), "timeout": (504, "upstream timed out")}

# RFC 9110 7.6.1: meaningful for one connection only, never forwarded (plus the
# pre-standard ones still sent in the wild).
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
                        "proxy-authorization", "te", "trailer", "transfer-encoding", "upgrade"})
# Request headers the gateway sets itself, or that must not reach the processor as
# sent: the client's credentials (Authorization, X-Api-Key) are the gateway's business,
# not the processor's, which gets its own token; Host and Content-Length describe this
# hop; Expect was answered by the gateway's server.
_REQUEST_REPLACED = frozenset({"host", "content-length", "authorization", "x-api-key", "x-forwarded-for",
                               "x-forwarded-host",
                               "x-forwarded-proto", "x-request-id", "x-experiments", "expect"})
# Answer headers the gateway sets itself (its own revision, rate limit, experiments,
# request id) or its server adds (Date, Server, the length of the body it sends).
_ANSWER_REPLACED = frozenset({"content-length", "date", "server", "x-config-revision", "ratelimit-limit",
                              "ratelimit-remaining", "ratelimit-reset", "ratelimit-policy", "x-experiments",
                              "x-request-id"})
# The processor's own X-Config-Revision reaches the client under this name, beside the
# gateway's: both revisions on one answer show the skew between the two services.
UPSTREAM_REVISION_HEADER = "X-Upstream-Config-Revision"

# An incoming X-Request-Id is kept if it looks like an id (what a load balancer or a
# client library makes); anything else is replaced by a fresh one, so logs downstream
# never carry a client's free text.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# Characters a decoded path keeps as they are when it is encoded again for the request
# line (RFC 3986 pchar and '/'); a query string is raw already, so '%', '?' stay too.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "%?"
# Methods whose request carries no body unless the client sends one.
_BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})


def thresholds(snapshot) -> Thresholds:
    return Thresholds(snapshot[BREAKER_FAILURES], snapshot[BREAKER_OPEN_SECONDS],
                      snapshot[BREAKER_HALF_OPEN_SUCCESSES], snapshot.revision)


def request_id(environ: dict) -> str:
    given = environ.get("HTTP_X_REQUEST_ID", "")
    return given if given and _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex


def has_dot_segment(path: str) -> bool:
    """Whether `path` (decoded) holds a `.` or `..` segment that could step out of /v1/."""
    return any(segment in (".", "..") for segment in path.split("/"))


def _target(environ: dict, base_path: str) -> str:
    """The request target to send upstream: the client's path (as sent, if the server
    kept it) and query, with anything a request line cannot hold percent-encoded."""
    path = environ.get("PATH_INFO") or "/"
    raw = (environ.get("RAW_URI") or environ.get("REQUEST_URI") or "").partition("?")[0]
    # The path as the client sent it keeps an encoded slash (%2F) encoded; it is used
    # when it is the one the server decoded (and routed on), else the decoded one is
    # encoded again.
    if raw.startswith("/") and (raw == path or urllib.parse.unquote(raw, "latin-1") == path):
        target = base_path + raw
    else:
        target = base_path + urllib.parse.quote(path.encode("latin-1", "replace"), safe=_PATH_SAFE)
    query = environ.get("QUERY_STRING", "")
    if query:
        target += "?" + urllib.parse.quote(query.encode("latin-1", "replace"), safe=_QUERY_SAFE)
    return target


def _sendable(value: str) -> bool:
    """Whether a header value can go on the wire as it came (a WSGI server hands over
    latin-1 text; anything else, or a line break, is not a header we received)."""
    if BAD_VALUE_RE.search(value):
        return False
    if value.isascii():
        return True
    try:
        value.encode("latin-1")
        return True
    except UnicodeEncodeError:
        return False


def _connection_tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",") if token.strip()}


class Forwarder:
    """This process's way to the processor: its connection pool and its breaker."""

    def __init__(self, settings: GatewaySettings) -> None:
        self.settings = settings
        self.breaker = CircuitBreaker("processor")
        # A burst beyond the pool opens extra connections rather than waiting; they
        # are closed when given back to a full pool.
        self.pool = UpstreamPool(settings.upstream, settings.pool_connections)

    def status(self, snapshot, details: bool = False) -> dict:
        # `revision`: the snapshot the thresholds shown come from. The processor's
        # address only with details, like etcd's (STATUS_DETAILS).
        body = {"revision": snapshot.revision, "breaker": self.breaker.status(thresholds(snapshot)),
                "idle_connections": self.pool.idle, "connections_opened": self.pool.opened}
        if details:
            body["url"] = str(self.settings.upstream)
        return body

    def _headers(self, request: flask.Request, rid: str, experiments: str | None) -> dict[str, str]:
        environ = request.environ
        dropped = HOP_BY_HOP | _REQUEST_REPLACED | _connection_tokens(environ.get("HTTP_CONNECTION", ""))
        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in dropped or not TOKEN_RE.fullmatch(name) or not _sendable(value):
                continue
            headers[name] = value if name not in headers else headers[name] + ", " + value
        peer = environ.get("REMOTE_ADDR") or "unknown"
        chain = environ.get("HTTP_X_FORWARDED_FOR", "")
        # Appended, as every proxy does: the processor trusts the entries its own
        # trusted hops added and no others (the same rule as gateway.identity).
        headers["X-Forwarded-For"] = f"{chain}, {peer}" if chain and _sendable(chain) else peer
        headers["X-Forwarded-Proto"] = environ.get("wsgi.url_scheme", "http")
        host = environ.get("HTTP_HOST")
        if host and _sendable(host):
            headers["X-Forwarded-Host"] = host
        headers["X-Request-Id"] = rid
        if experiments:
            headers["X-Experiments"] = experiments
        if self.settings.token:
            headers["Authorization"] = "Bearer " + self.settings.token
        return headers

    def forward(self, request: flask.Request, body: bytes, snapshot, own_headers: dict[str, str],
                experiments: str | None) -> flask.Response:
        """Send `request`, with its `body` (read and bounded by the pipeline), upstream
        and answer with what came back; `own_headers` (the gateway's revision, rate
        limit, experiments) go on every answer."""
        environ = request.environ
        rid = request_id(environ)
        own_headers["X-Request-Id"] = rid
        if has_dot_segment(request.path):
            return json_response({"error": "path must not contain . or .. segments"}, 400, own_headers)

        bounds = thresholds(snapshot)
        permit = self.breaker.acquire(bounds)
        if isinstance(permit, Refusal):
            own_headers["Retry-After"] = str(permit.retry_after)
            return json_response({"error": "upstream circuit open", "state": permit.state,
                                  "retry_after": permit.retry_after}, 503, own_headers)
        method = request.method
        timeout_ms = snapshot[UPSTREAM_TIMEOUT_MS]
        try:
            answer = self.pool.request(method, _target(environ, self.settings.upstream.base_path),
                                       body if body or method not in _BODYLESS else None,
                                       self._headers(request, rid, experiments), timeout_ms / 1000)
        except UpstreamError as exc:
            self.breaker.record(permit, False, bounds)
            status, message = _FAILURES[exc.kind]
            detail = {"timeout_ms": timeout_ms} if exc.kind == "timeout" else {}
            log.warning("%s: %s %s", message, method, self.settings.upstream, extra={"json_fields": {
                "event": "upstream_failed", "status": status, "request_id": rid,
                "upstream": str(self.settings.upstream), "error": str(exc)[:300], "revision": snapshot.revision,
                **detail}})
            return json_response({"error": message, "request_id": rid, **detail}, status, own_headers)
        except Unsendable as exc:
            self.breaker.release(permit)  # the client's request, not the upstream, was at fault
            return json_response({"error": f"request cannot be forwarded: {exc}"[:200]}, 400, own_headers)
        except BaseException:
            # Not the upstream's failure (a fault here): no verdict, but the trial slot is freed.
            self.breaker.release(permit)
            raise
        self.breaker.record(permit, answer.status < 500, bounds)
        return self._answer(answer, own_headers)

    @staticmethod
    def _answer(answer: Answer, own_headers: dict[str, str]) -> flask.Response:
        connection = ""
        upstream_revision = None
        has_type = has_cache_control = False
        for name, value in answer.headers:
            lower = name.lower()
            if lower == "connection":
                connection += "," + value
            elif lower == "x-config-revision":
                upstream_revision = value
            elif lower == "content-type":
                has_type = True
            elif lower == "cache-control":
                has_cache_control = True
        dropped = HOP_BY_HOP | _ANSWER_REPLACED | _connection_tokens(connection)
        passed = [(name, value) for name, value in answer.headers if name.lower() not in dropped]
        if upstream_revision is not None:
            passed.append((UPSTREAM_REVISION_HEADER, upstream_revision))
        # The processor says how its answers may be cached; the gateway's no-store is
        # for the answers it makes itself.
        passed.extend(item for item in own_headers.items() if item[0] != "Cache-Control" or not has_cache_control)
        response = flask.Response(answer.body, status=answer.status, headers=passed)
        if not has_type:
            del response.headers["Content-Type"]  # none given: none invented
        return response
