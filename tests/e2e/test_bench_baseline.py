"""The throughput benchmark's baseline (bench/bare) answers what the gateway answers.

"Gateway vs bare handler" is meant to price the configuration snapshot and the
policies alone, so both must serve the same answer: the same headers and a body of the
same shape and size. A header the gateway gains (as RateLimit-Policy once did) and the
baseline lacks would be counted against the gateway's policies.
"""

from __future__ import annotations

import requests

from config_watch import RATE_LIMIT, RATE_LIMIT_BURST
from tests.support import wait_until
from tools.function_server import FunctionServer
from bench.forwarding import BARE_SOURCE

# The limit the bench sets, so nothing is throttled.
HIGH = "1000000"


def shape(value):
    """A JSON value's structure: the keys of objects, the types of the rest."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    return type(value).__name__


def test_the_bare_handler_serves_the_gateways_answer(etcd, tmp_path):
    etcd.etcdctl("put", RATE_LIMIT, HIGH)
    etcd.etcdctl("put", RATE_LIMIT_BURST, HIGH)
    gateway = FunctionServer({"ETCD_ENDPOINTS": etcd.endpoint}, workers=1, log_path=str(tmp_path / "gateway.log"))
    bare = FunctionServer({}, workers=1, target="bare", source=str(BARE_SOURCE), log_path=str(tmp_path / "bare.log"))
    try:
        gateway.start()
        bare.start()
        revision = etcd.revision()
        ours = wait_until(lambda: (r := requests.get(gateway.url + "/", timeout=5)).ok
                          and int(r.headers["X-Config-Revision"]) >= revision and r, 20)
        theirs = requests.get(bare.url + "/", timeout=5)
    finally:
        gateway.stop()
        bare.stop()
    assert theirs.status_code == ours.status_code == 200
    assert sorted(theirs.headers) == sorted(ours.headers)
    for name in ("RateLimit-Limit", "RateLimit-Policy", "Cache-Control", "Content-Type"):
        assert theirs.headers[name] == ours.headers[name], name
    assert shape(theirs.json()) == shape(ours.json())
    # The same size within the digits of a revision.
    assert abs(len(theirs.content) - len(ours.content)) <= 2 * len(str(revision))
