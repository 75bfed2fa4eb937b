"""HTTP fuzzing of the gateway (Flask test client) against a real etcd, forwarding
`/v1/` to a real upstream that echoes what it got."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import functions_framework
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from config_watch import RATE_LIMIT, RATE_LIMIT_BURST
from tests.support import wait_until
from tools.upstream_server import UpstreamServer

MAIN = str(Path(__file__).resolve().parents[2] / "main.py")
# High enough that fuzzing never runs out of tokens: every request reaches the handler's end.
LIMIT = "1000000"
# functions-framework answers these itself, before the function runs.
FRAMEWORK_PATHS = {"/robots.txt", "/favicon.ico"}


def may_miss_function(path: str) -> bool:
    """Whether functions-framework's routing may answer `path` itself (a 404).

    Its own paths, and paths with a (percent-encoded) newline: its rules are regexes
    whose `.` does not match one (though `$` matches before a final one, so some such
    paths still reach the function).
    """
    return path in FRAMEWORK_PATHS or "\n" in path

# Printable text: the test client, like any HTTP client, cannot send CR/LF or NUL in a header.
header_text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=200)

methods = st.one_of(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE"]),
    st.from_regex(r"\A[A-Za-z][A-Za-z-]{0,15}\Z"),
)
segments = st.one_of(
    st.sampled_from(["..", ".", "", "_status", "onboarding", "v1", "jobs", "%", "%00", "%2F", "%ff", "a b", "é", "🙂",
                     "?x=1", "#f", "\x00"]),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
)
paths = st.one_of(
    st.sampled_from(["/", "/_status", "/onboarding", "/../../etc/passwd", "/robots.txt", "/v1/jobs", "/v1/",
                     "/v1/../_status", "/v1/./jobs"]),
    st.lists(segments, max_size=8).map(lambda parts: "/" + "/".join(parts)),
    st.lists(segments, max_size=6).map(lambda parts: "/v1/" + "/".join(parts)),
    st.integers(1000, 20_000).map(lambda n: "/" + "a" * n),
    st.integers(100, 2_000).map(lambda n: "/" + "é/" * n),
)
xff = st.one_of(
    st.sampled_from([",,,", "[::1", "]", "\"", "\"1.2.3.4, 5.6.7.8", "::1", "1.2.3.4, , ,", " "]),
    st.integers(1, 2000).map(lambda n: ", ".join(f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}"
                                                 for i in range(n))),
    header_text,
)
api_keys = st.one_of(
    header_text,
    st.sampled_from(["ключ", "caf\xe9", "🔑", " ", "\t"]),
    st.integers(10_000, 1_000_000).map(lambda n: "k" * n),
    # What a real server hands over: the UTF-8 bytes of a non-ASCII key, decoded as latin-1.
    header_text.map(lambda t: t.encode("utf-8").decode("latin-1")),
)
requests = st.fixed_dictionaries(
    {"method": methods, "path": paths, "body": st.binary(max_size=2048)},
    optional={
        "xff": xff,
        "api_key": api_keys,
        "content_type": st.sampled_from(["application/json", "text/plain", "multipart/form-data",
                                         "application/x-www-form-urlencoded", "x/\u00ff", ""]),
        "query": st.sampled_from(["a=1", "%zz", "a=%ff&&b", "=" * 1000, "x=\u00e9"]),
        "other": st.dictionaries(st.from_regex(r"\AX-[A-Za-z]{1,10}\Z"), header_text, max_size=3),
    },
)


def check_response(response, req: dict, min_revision: int) -> None:
    assert response.status_code < 500, (response.status_code, response.data[:500], req["method"], req["path"][:200])
    path = response.request.path
    if path == "/_status":
        assert response.status_code == 200
        if req["method"] != "HEAD":
            assert json.loads(response.data)["synced"] is True
        return
    if may_miss_function(path) and "X-Config-Revision" not in response.headers:
        assert response.status_code == 404
        return
    revision = response.headers.get("X-Config-Revision")
    assert revision is not None, (response.status_code, req["method"], path[:200])
    assert int(revision) >= min_revision
    assert response.headers["RateLimit-Limit"] == LIMIT
    forwarded = path.startswith("/v1/")
    if forwarded and response.status_code != 200 and response.mimetype != "application/json":
        return  # the upstream's own refusal (e.g. 431 for a huge X-Forwarded-For), passed through
    if req["method"] != "HEAD":
        body = json.loads(response.data)
        if forwarded and response.status_code == 200:
            # Forwarded: the upstream's echo of what it received.
            assert body["method"] == req["method"].upper()  # as the test client sends it
            assert body["target"].startswith("/v1/")
            sent = {name.lower(): value for name, value in body["headers"]}
            assert sent["authorization"] == "Bearer fuzz-token"
        elif response.status_code == 200 and path != "/onboarding":
            assert body["applied"]["values"][RATE_LIMIT] == int(LIMIT)


@pytest.fixture
def upstream():
    with UpstreamServer() as up:
        yield up


def gateway_client(etcd, hops: int, rate: str, burst: str, upstream: UpstreamServer | None = None):
    """A test client of the gateway, once its watcher has seen `rate` and `burst`."""
    os.environ["ETCD_ENDPOINTS"] = etcd.endpoint
    if upstream is not None:
        os.environ["PROCESSOR_URL"] = upstream.url
        os.environ["PROCESSOR_TOKEN"] = "fuzz-token"
    os.environ["TRUSTED_PROXY_HOPS"] = str(hops)
    etcd.etcdctl("put", RATE_LIMIT, rate)
    revision = json.loads(etcd.etcdctl("put", RATE_LIMIT_BURST, burst, "-w", "json"))["header"]["revision"]
    client = functions_framework.create_app(target="api_gateway", source=MAIN).test_client()
    wait_until(lambda: client.get("/_status").get_json()["revision"] >= revision, timeout=10,
               message="gateway watcher at the revision just written")
    return client, revision


def fuzz_gateway(etcd, upstream, hops: int, examples: int) -> None:
    client, min_revision = gateway_client(etcd, hops, LIMIT, LIMIT, upstream)
    statuses: Counter[int] = Counter()

    @settings(max_examples=examples, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example])
    @given(req=requests)
    def one_request(req):
        headers = dict(req.get("other", {}))
        if "xff" in req:
            headers["X-Forwarded-For"] = req["xff"]
        if "api_key" in req:
            headers["X-Api-Key"] = req["api_key"]
        if "content_type" in req:
            headers["Content-Type"] = req["content_type"]
        # As a WSGI server hands it over: the decoded path's UTF-8 bytes as latin-1 text.
        path_info = req["path"].encode("utf-8").decode("latin-1")
        response = client.open("/", method=req["method"], headers=headers, data=req["body"],
                               query_string=req.get("query", ""), environ_overrides={"PATH_INFO": path_info})
        statuses[response.status_code] += 1
        try:
            check_response(response, req, min_revision)
        finally:
            response.close()

    one_request()
    print(f"hops={hops}: responses by status {dict(statuses)}; {upstream.requests} forwarded")
    assert upstream.requests > 0, "no fuzzed request was forwarded"
    assert statuses[200] > examples // 4, "too few fuzzed requests reached the end of the handler"


def test_fuzzed_requests_never_get_a_server_error_without_trusted_proxies(etcd, upstream):
    fuzz_gateway(etcd, upstream, hops=0, examples=150)


def test_fuzzed_requests_never_get_a_server_error_behind_one_trusted_proxy(etcd, upstream):
    fuzz_gateway(etcd, upstream, hops=1, examples=150)


@pytest.mark.parametrize("hops", [0, 1])
def test_a_client_cannot_escape_its_limit_with_its_own_forwarded_header(etcd, hops):
    """A burst of 2: every request after the second is refused, whatever X-Forwarded-For it forges."""
    client, revision = gateway_client(etcd, hops, rate="60", burst="2")
    # Behind one proxy, the proxy appends the address it saw: the same for every forgery.
    suffix = ", 203.0.113.9" if hops else ""
    statuses = []
    for forged in ["1.1.1.1", "2.2.2.2", "3.3.3.3", "[::1", ",,,", '"']:
        response = client.get("/", headers={"X-Forwarded-For": forged + suffix})
        assert int(response.headers["X-Config-Revision"]) >= revision
        statuses.append(response.status_code)
    assert statuses == [200, 200, 429, 429, 429, 429]
