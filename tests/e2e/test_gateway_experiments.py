"""A/B experiments through the gateway (Flask test client of functions-framework's app,
real etcd): the X-Experiments header and the properties of the assignment."""

from __future__ import annotations

import os
from collections import Counter

import functions_framework
import pytest

import config_watch
from config_watch import EXPERIMENTS, RATE_LIMIT, RATE_LIMIT_BURST
from gateway import client_identity
from tests.support import wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECKOUT = EXPERIMENTS + "checkout"
# Clients asked through the gateway (each a request), and clients whose share is
# counted with the gateway's own identity and the library's assignment (which the test
# above shows the gateway's answers equal).
THROUGH_GATEWAY = 2_000
IDENTITIES = 10_000


@pytest.fixture
def client(etcd, monkeypatch):
    monkeypatch.setenv("ETCD_ENDPOINTS", etcd.endpoint)
    monkeypatch.setenv("STATUS_DETAILS", "true")  # rejected values with their reasons
    etcd.etcdctl("put", RATE_LIMIT, "1000000")
    etcd.etcdctl("put", RATE_LIMIT_BURST, "1000000")
    app = functions_framework.create_app(target="api_gateway", source=os.path.join(ROOT, "main.py"))
    return app.test_client()


def put(etcd, client, key: str, value: str | None) -> None:
    """Write (or delete) `key` and wait until the gateway answers from that revision."""
    etcd.etcdctl(*(("put", key, value) if value is not None else ("del", key)))
    revision = etcd.revision()
    wait_until(lambda: int(client.get("/onboarding").headers["X-Config-Revision"]) >= revision, 10)


def variants(client, keys) -> dict[str, str]:
    out = {}
    for key in keys:
        header = client.get("/onboarding", headers={"X-Api-Key": key}).headers["X-Experiments"]
        out[key] = dict(item.split("=") for item in header.split(","))["checkout"]
    return out


def test_header_absent_without_experiments_sorted_when_present_gone_when_deleted(etcd, client):
    assert "X-Experiments" not in client.get("/").headers
    put(etcd, client, CHECKOUT, "control:50,treatment:50")
    put(etcd, client, EXPERIMENTS + "banner", "off:0,on:100")
    header = client.get("/", headers={"X-Api-Key": "someone"}).headers["X-Experiments"]
    assert header.startswith("banner=on,checkout=")
    # Refusals carry it too: the client's variants hold for the answer it got.
    put(etcd, client, RATE_LIMIT_BURST, "1")
    put(etcd, client, RATE_LIMIT, "1")
    while (limited := client.get("/", headers={"X-Api-Key": "greedy"})).status_code != 429:
        pass
    assert limited.headers["X-Experiments"].startswith("banner=on,checkout=")
    put(etcd, client, EXPERIMENTS + "banner", None)
    assert client.get("/", headers={"X-Api-Key": "someone"}).headers["X-Experiments"].startswith("checkout=")
    put(etcd, client, CHECKOUT, None)
    assert "X-Experiments" not in client.get("/", headers={"X-Api-Key": "someone"}).headers


def test_the_gateway_assigns_by_the_rate_limiters_identity(etcd, client):
    put(etcd, client, CHECKOUT, "a:34,b:33,c:33")
    snapshot = config_watch.snapshot()
    for key in (f"user-{i}" for i in range(200)):
        identity = client_identity({"HTTP_X_API_KEY": key}, 0)
        assert variants(client, [key])[key] == config_watch.assign(snapshot, "checkout", identity)
    # Without a key, the client address is the identity.
    header = client.get("/", environ_base={"REMOTE_ADDR": "192.0.2.44"}).headers["X-Experiments"]
    assert header == "checkout=" + config_watch.assign(snapshot, "checkout", "ip:192.0.2.44")


def test_a_client_keeps_its_variant_while_the_split_is_unchanged(etcd, client):
    put(etcd, client, CHECKOUT, "control:50,treatment:50")
    keys = [f"user-{i}" for i in range(300)]
    before = variants(client, keys)
    put(etcd, client, RATE_LIMIT, "999999")  # another key changes: a new revision, same split
    assert variants(client, keys) == before
    assert set(before.values()) == {"control", "treatment"}


def test_growing_a_variant_keeps_everyone_in_it_and_shares_match_the_weights(etcd, client):
    keys = [f"user-{i}" for i in range(THROUGH_GATEWAY)]
    put(etcd, client, CHECKOUT, "control:90,treatment:10")
    at_10 = variants(client, keys)
    snapshot_10 = config_watch.snapshot()
    put(etcd, client, CHECKOUT, "control:80,treatment:20")
    at_20 = variants(client, keys)
    snapshot_20 = config_watch.snapshot()
    assert all(at_20[k] == "treatment" for k, v in at_10.items() if v == "treatment")
    assert sum(v == "treatment" for v in at_20.values()) > sum(v == "treatment" for v in at_10.values())
    identities = [client_identity({"HTTP_X_API_KEY": f"client-{i}"}, 0) for i in range(IDENTITIES)]
    for snapshot, weight in ((snapshot_10, 10), (snapshot_20, 20)):
        counts = Counter(config_watch.assign(snapshot, "checkout", identity) for identity in identities)
        assert abs(counts["treatment"] / IDENTITIES * 100 - weight) <= 1.5, (weight, counts)


def test_a_bad_split_is_rejected_and_the_last_good_one_stays(etcd, client):
    put(etcd, client, CHECKOUT, "control:0,treatment:100")
    put(etcd, client, CHECKOUT, "control:60,treatment:60")
    assert client.get("/", headers={"X-Api-Key": "x"}).headers["X-Experiments"] == "checkout=treatment"
    rejected = client.get("/_status").json["rejected"]
    assert [r["key"] for r in rejected] == [CHECKOUT] and "sum to 120" in rejected[0]["reason"]
