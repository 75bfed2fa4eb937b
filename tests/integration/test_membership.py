"""A process's lease-bound membership record against a real etcd: registration,
renewal driven by requests but never run on them, expiry, and failures that leave
the service serving."""

from __future__ import annotations

import base64
import json
import logging
import threading
import time

import pytest

from config_watch import INSTANCES, Membership
from config_watch._etcd_json import JsonGatewayClient
from tests.conftest import fast_settings
from tests.support import silent_endpoint, wait_until

TTL = 2  # etcd's smallest lease with its default election timeout


@pytest.fixture
def make_member():
    made: list[Membership] = []

    def make(endpoints: str, watch: bool = True, group: str | None = None, **overrides) -> Membership:
        settings = fast_settings(endpoints, INSTANCE_TTL_SECONDS=TTL, **overrides)
        member = Membership(settings, "api-gateway", watch=watch, group=group).start()
        made.append(member)
        return member

    yield make
    for member in made:
        member.close()


def members_in_etcd(etcd) -> dict[str, dict]:
    out = etcd.etcdctl("get", "--prefix", INSTANCES, "-w", "json")
    kvs = json.loads(out).get("kvs", [])
    return {base64.b64decode(kv["key"]).decode(): kv for kv in kvs}


def test_first_touch_registers_a_lease_bound_record(etcd, make_member):
    member = make_member(etcd.endpoint)
    member.touch()
    record = wait_until(lambda: members_in_etcd(etcd).get(member.key), 10, message="record written")
    assert record.get("lease"), "the record must be bound to a lease"
    ttl = json.loads(etcd.etcdctl("lease", "timetolive", format(int(record["lease"]), "x"), "-w", "json"))
    assert 0 < ttl["granted-ttl"] <= TTL + 1
    wait_until(lambda: member.count() == 1 and member.member_id in member.members(), 10,
               message="the watcher lists this member")
    assert member.status()["registered"]


def test_touch_never_waits_for_etcd(make_member):
    with silent_endpoint() as endpoint:  # every call hangs to its deadline
        member = make_member(endpoint, watch=False, ETCD_REQUEST_TIMEOUT_SECONDS=1)
        slowest = 0.0
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            started = time.perf_counter()
            member.touch()
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.002)
        assert member.counters["failures"] >= 1, "the helper did try, and waited out its deadline"
        # Far below the 1 s a call to etcd waits; the first touch starts the helper thread.
        assert slowest < 0.3, f"touch took {slowest * 1000:.1f} ms with etcd silent"


class Held(JsonGatewayClient):
    """The real client, one of whose calls waits until the test lets it go: before it
    is sent (`hold="put"`, `"keepalive"`) or after its answer (`"keepalive answered"`)."""

    def __init__(self, settings, hold: str) -> None:
        super().__init__(settings)
        self.hold = hold
        self.entered, self.release = threading.Event(), threading.Event()
        self.grants = 0

    def _wait(self) -> None:
        self.entered.set()
        assert self.release.wait(10)

    def lease_grant(self, *args, **kwargs):
        self.grants += 1
        return super().lease_grant(*args, **kwargs)

    def put(self, *args, **kwargs):
        if self.hold == "put":
            self._wait()
        return super().put(*args, **kwargs)

    def lease_keepalive(self, *args, **kwargs):
        if self.hold == "keepalive":
            self._wait()
        ttl = super().lease_keepalive(*args, **kwargs)
        if self.hold == "keepalive answered":
            self._wait()
        return ttl


@pytest.fixture
def held(etcd):
    made = []

    def make(hold: str) -> tuple[Membership, Held]:
        settings = fast_settings(etcd.endpoint, INSTANCE_TTL_SECONDS=30)
        client = Held(settings, hold)
        member = Membership(settings, "api-gateway", client=client).start()
        made.append((member, client))
        return member, client

    yield make
    for member, client in made:
        client.release.set()
        member.close()


def close_while_held(member: Membership, client: Held) -> None:
    """close() with a call of the helper's held; the call goes on 0.2 s later."""
    assert client.entered.wait(10), "the helper's call never started"
    threading.Timer(0.2, client.release.set).start()
    member.close()
    assert not member._worker.is_alive(), "close() returned with the helper's call still in flight"


def test_a_registration_that_ends_during_close_leaves_before_close_returns(etcd, held):
    member, client = held("put")
    member.touch()
    close_while_held(member, client)  # the lease is granted, the record not yet written
    # Left when close() returns, as a clean close does; not 30 s later, when the lease lapses.
    assert member.key not in members_in_etcd(etcd)
    assert member.counters["registrations"] == 0


def registered_then_deleted(etcd, member: Membership) -> None:
    member.touch()
    wait_until(lambda: member.member_id in member.members(), 10, message="registered and listed")
    etcd.etcdctl("del", member.key)  # deleted by hand: the next renewal writes it again
    wait_until(lambda: member.member_id not in member.members(), 10, message="the watch saw it go")
    member.serve()  # finds itself missing: a renewal starts at once


def test_a_record_written_again_during_close_is_never_left_without_a_lease(etcd, held):
    member, client = held("keepalive answered")
    registered_then_deleted(etcd, member)
    close_while_held(member, client)  # revokes the lease the renewal has just renewed
    assert member.key not in members_in_etcd(etcd)  # not written again, lease or none


def test_a_lease_revoked_by_close_is_not_taken_for_expired(etcd, held, caplog):
    member, client = held("keepalive")
    registered_then_deleted(etcd, member)
    close_while_held(member, client)  # the keepalive then finds the lease gone
    assert client.grants == 1, "registered again after close()"
    assert not [r for r in caplog.records if "registering again" in r.getMessage()]
    assert member.key not in members_in_etcd(etcd)


def test_a_registration_that_fails_after_close_is_not_reported(make_member, caplog):
    with silent_endpoint() as endpoint:  # the call waits out its 1 s
        member = make_member(endpoint, watch=False, ETCD_REQUEST_TIMEOUT_SECONDS=1)
        member.touch()
        wait_until(lambda: member._client is not None, 5, message="the helper's call under way")
        member.close()
        assert not member._worker.is_alive()
    assert member.counters["failures"] == 0
    assert not [r for r in caplog.records if "renewal failed" in r.getMessage()]


def test_requests_keep_the_lease_alive_and_silence_lets_it_lapse(etcd, make_member):
    member = make_member(etcd.endpoint)
    deadline = time.monotonic() + 3 * TTL
    while time.monotonic() < deadline:  # a request every 50 ms for three TTLs
        member.touch()
        time.sleep(0.05)
    assert member.key in members_in_etcd(etcd)
    assert member.counters["registrations"] == 1 and member.counters["renewals"] >= 3
    started = time.monotonic()
    wait_until(lambda: member.key not in members_in_etcd(etcd), 3 * TTL, message="record lapsed")
    assert time.monotonic() - started <= TTL + 1.5
    wait_until(lambda: member.member_id not in member.members(), 5, message="the watch saw it go")


def test_a_lease_that_lapsed_during_a_freeze_is_taken_out_again(etcd, make_member):
    member = make_member(etcd.endpoint)
    member.touch()
    record = wait_until(lambda: members_in_etcd(etcd).get(member.key), 10)
    # What a frozen CPU amounts to: the lease ran out while nothing was renewed.
    etcd.etcdctl("lease", "revoke", format(int(record["lease"]), "x"))
    assert member.key not in members_in_etcd(etcd)
    member._due_at = 0.0  # the next request finds the renewal due
    member.touch()
    wait_until(lambda: member.key in members_in_etcd(etcd), 10, message="registered again")
    assert member.counters["registrations"] == 2


def test_a_record_deleted_by_hand_is_written_again(etcd, make_member):
    member = make_member(etcd.endpoint)
    member.touch()
    wait_until(lambda: member.member_id in member.members(), 10)
    etcd.etcdctl("del", member.key)
    wait_until(lambda: member.member_id not in member.members(), 10, message="the watch saw the delete")

    def rewritten():
        member.serve()
        return member.key in members_in_etcd(etcd)

    wait_until(rewritten, 10, message="record written again")
    assert member.counters["registrations"] == 1  # the lease lived on


def test_other_members_count_and_a_member_that_stops_drops_out(etcd, make_member):
    a, b, c = (make_member(etcd.endpoint) for _ in range(3))
    for m in (a, b, c):
        m.touch()
    wait_until(lambda: a.count() == 3, 10, message="three members")
    deadline = time.monotonic() + 4 * TTL
    while time.monotonic() < deadline and a.count() != 2:  # c serves nothing more
        a.touch()
        b.touch()
        time.sleep(0.05)
    assert a.count() == 2 and c.member_id not in a.members()


def test_members_of_one_group_count_once(make_member):
    # The workers of one instance share their buckets: one member of the fleet however
    # many records they write (`<group>.<pid>`); another instance is another member.
    a = make_member("127.0.0.1:1", watch=False, group="host-1-aa")
    assert a.member_id == f"host-1-aa.{a.pid}"
    listed = {"host-1-aa.101": "", "host-1-aa.102": "", "host-2-bb.201": "", "legacy-id": ""}
    assert a.count(listed) == 3
    # Its own group unlisted yet (not registered): it serves, so it counts.
    assert a.count({"host-2-bb.201": "", "host-2-bb.202": ""}) == 2


def test_joins_and_leaves_are_logged_at_debug_only(etcd, make_member, caplog):
    # Every process watches the members: an INFO line per join in each would make
    # N^2 lines fleet-wide.
    caplog.set_level(logging.DEBUG, logger="config_watch._watcher")
    a = make_member(etcd.endpoint)
    b = make_member(etcd.endpoint)
    a.touch()
    b.touch()
    wait_until(lambda: a.count() == 2, 10, message="two members")
    applied = [r for r in caplog.records if r.getMessage().startswith("applied revision")]
    assert applied and all(r.levelno == logging.DEBUG for r in applied)


def test_etcd_down_leaves_the_count_serving_and_logs_a_warning(etcd, make_member, caplog):
    caplog.set_level(logging.WARNING, logger="config_watch.membership")
    member = make_member(etcd.endpoint)
    member.touch()
    wait_until(lambda: member.count() == 1 and member.member_id in member.members(), 10)
    other = make_member(etcd.endpoint)
    other.touch()
    wait_until(lambda: member.count() == 2, 10, message="two members")
    etcd.stop()
    try:
        deadline = time.monotonic() + 2 * TTL
        while time.monotonic() < deadline:
            member.touch()
            assert member.count() == 2  # the last known N
            time.sleep(0.05)
        wait_until(lambda: member.last_error, 10, message="renewal failure recorded")
        assert any("membership registration or renewal failed" in r.getMessage() for r in caplog.records)
    finally:
        etcd.start()
    wait_until(lambda: (member.touch(), member.last_error is None and member.key in members_in_etcd(etcd))[1],
               20, interval=0.1, message="registered again once etcd is back")
