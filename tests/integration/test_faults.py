"""Faults injected into real processes: stalled connections, a three-member cluster."""

from __future__ import annotations

import json
import threading
import time

import pytest

from config_watch import RATE_LIMIT, ConfigWatcher, EtcdError, Settings
from config_watch._etcd import EtcdClient, ordered_progress
from config_watch._source import EtcdSource
from tests.conftest import PREFIXES, fast_settings
from tests.support import silent_endpoint, wait_until
from tools.etcd_server import EtcdCluster



def test_stalled_watch_is_detected_within_bound_and_caught_up(etcd, proxy, make_watcher):
    watcher = make_watcher(proxy.endpoint, ETCD_DEAD_STREAM_SECONDS=1.5)
    assert watcher.wait_synced(5)
    wait_until(lambda: watcher.connected, 5)
    connections = proxy.accepted
    proxy.stall()  # the connection stays open but nothing crosses it any more
    stalled_at = time.monotonic()
    etcd.etcdctl("put", RATE_LIMIT, "31")
    target = etcd.revision()
    wait_until(lambda: watcher.store.current.revision == target, 10, message="caught up over a new connection")
    caught_up = time.monotonic() - stalled_at
    assert watcher.store.current[RATE_LIMIT] == 31
    assert proxy.accepted > connections  # it had to reconnect: the stalled stream never answered
    # Dead-stream bound 1.5 s, plus one progress tick (0.5 s) and the first backoff step.
    assert caught_up < 1.5 + 0.5 + 1.5, caught_up


def test_request_after_staleness_bound_sees_changes_a_stalled_watch_missed(etcd, proxy, make_watcher):
    # A watch that would take 60 s to notice, so only the request-path guard can help.
    watcher = make_watcher(proxy.endpoint, ETCD_DEAD_STREAM_SECONDS=60, ETCD_KEEPALIVE_SECONDS=60,
                           CONFIG_STALENESS_SECONDS=0.5)
    assert watcher.wait_synced(5)
    wait_until(lambda: watcher.connected, 5)
    proxy.stall()
    etcd.etcdctl("put", RATE_LIMIT, "32")
    target = etcd.revision()
    assert watcher.store.current[RATE_LIMIT] != 32
    wait_until(lambda: watcher.staleness() > 0.5, 5, message="snapshot past the staleness bound")
    snapshot = watcher.ensure_fresh()
    assert snapshot.revision == target and snapshot[RATE_LIMIT] == 32
    assert watcher.counters["check_catchups"] == 1
    # The guard also restarted the watch, which now runs on a fresh connection.
    etcd.etcdctl("put", RATE_LIMIT, "33")
    wait_until(lambda: watcher.store.current[RATE_LIMIT] == 33, 10, message="watch resumed after the nudge")


def test_fresh_snapshot_is_served_without_asking_etcd(etcd, make_watcher):
    watcher = make_watcher(etcd.endpoint, CONFIG_STALENESS_SECONDS=5)
    assert watcher.wait_synced(5)
    wait_until(lambda: watcher.connected, 5)
    for _ in range(1000):
        watcher.ensure_fresh()
    assert watcher.counters["checks"] == 0


def test_unreachable_etcd_keeps_last_good_snapshot_and_reports_stale(etcd, proxy, make_watcher):
    etcd.etcdctl("put", RATE_LIMIT, "34")
    watcher = make_watcher(proxy.endpoint, CONFIG_STALENESS_SECONDS=0.5, CONFIG_CHECK_TIMEOUT_SECONDS=0.3)
    assert watcher.wait_synced(5)
    proxy.cut()
    wait_until(lambda: watcher.staleness() > 0.5, 5)
    started = time.monotonic()
    snapshot = watcher.ensure_fresh()
    assert time.monotonic() - started < 1.0  # bounded by the check's deadline, not hung
    assert snapshot[RATE_LIMIT] == 34
    status = watcher.status()
    assert status.stale is True and status.connected is False
    # While etcd stays unreachable, the next requests do not each pay a check's deadline.
    checks = watcher.counters["checks"]
    started = time.monotonic()
    for _ in range(100):
        assert watcher.ensure_fresh()[RATE_LIMIT] == 34
    assert time.monotonic() - started < 0.5
    assert watcher.counters["checks"] == checks


class Writer(threading.Thread):
    """Puts 1, 2, 3, ... to one key through any live member, until stopped."""

    def __init__(self, endpoints: str, key: str) -> None:
        super().__init__(daemon=True)
        self.client = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": endpoints}))
        self.key = key
        self.stop = threading.Event()
        self.written = 0
        self.errors = 0

    def run(self) -> None:
        value = 1
        while not self.stop.is_set():
            try:
                self.client.put(self.key, str(value), timeout=1)
                self.written = value
                value += 1
            except EtcdError:
                self.errors += 1
                self.client.rotate()
            self.stop.wait(0.005)


def history(endpoint: str, key: str, start: bytes, end: bytes) -> list[tuple[str, bytes, int]]:
    """Every event on `key` since revision 1, read with a watch from the beginning."""
    client = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": endpoint}))
    _, kvs = client.list_range(start, end, timeout=5)
    last = max((kv.mod_revision for kv in kvs if kv.key == key), default=0)
    stream = client.watch(start, end, 1)
    events = []
    try:
        while not events or events[-1][2] < last:
            batch = stream.get(timeout=5)
            assert batch is not None, "history watch went silent"
            events += [(e.key, e.value, e.mod_revision) for e in batch.events if e.key == key]
    finally:
        stream.close()
        client.close()
    return events


def member_serving(cluster: EtcdCluster, endpoint: str):
    return next(m for m in cluster.members if m.endpoint == endpoint)


def leader_of(cluster: EtcdCluster):
    live = cluster.running_member()
    statuses = json.loads(live.etcdctl("endpoint", "status", "--cluster", "-w", "json"))
    leader_id = statuses[0]["Status"]["leader"]
    url = next(s["Endpoint"] for s in statuses if s["Status"]["header"]["member_id"] == leader_id)
    return next(m for m in cluster.members if m.client_url == url)


@pytest.fixture
def cluster(tmp_path):
    with EtcdCluster(3, base_dir=str(tmp_path / "cluster")) as c:
        yield c


class RecordingSource(EtcdSource):
    """The production source; every event batch its streams deliver is also recorded."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delivered: list = []
        self.relisted: list[tuple[int, int]] = []  # (revision in force, revision listed)
        self.late_starts: list[tuple[int, int]] = []  # (watch start, revision in force)
        self.watcher = None

    def list(self, timeout):
        before = self.watcher.store.current.revision
        revision, kvs = super().list(timeout)
        self.relisted.append((before, revision))
        return revision, kvs

    def watch(self, start_revision, on_events):
        current = self.watcher.store.current.revision
        if start_revision != current + 1:
            self.late_starts.append((start_revision, current))

        def recording(events):
            current = self.watcher.store.current.revision
            self.delivered.extend((e.key, e.value, e.mod_revision) for e in events
                                  if e.key == RATE_LIMIT and e.mod_revision > current)
            on_events(events)

        return super().watch(start_revision, recording)


def test_cluster_member_and_leader_loss_deliver_every_change_in_order(cluster):
    settings = fast_settings(cluster.endpoints)
    source = RecordingSource(settings, PREFIXES)
    watcher = source.watcher = ConfigWatcher(lambda: source, PREFIXES, settings)
    watcher.start()
    try:
        every_change_in_order(cluster, watcher, source.delivered, source.relisted)
        assert source.late_starts == []  # every watch resumed just after the revision in force
    finally:
        watcher.stop()


def every_change_in_order(cluster, watcher, applied: list, relisted: list[tuple[int, int]]) -> None:
    assert watcher.wait_synced(10)
    wait_until(lambda: watcher.connected, 5)
    writer = Writer(cluster.endpoints, RATE_LIMIT)
    writer.start()
    try:
        wait_until(lambda: writer.written >= 50, 10, message="writer running")
        used = member_serving(cluster, watcher.endpoint)
        used.kill()
        wait_until(lambda: watcher.connected and watcher.endpoint != used.endpoint, 15,
                   message="watcher moved to another member")
        mark = writer.written
        wait_until(lambda: writer.written >= mark + 50, 15, message="writes continue")
        used.restart()
        leader = leader_of(cluster)
        leader.kill()
        mark = writer.written
        wait_until(lambda: writer.written >= mark + 50, 20, message="writes continue after leader loss")
        leader.restart()
        mark = writer.written
        wait_until(lambda: writer.written >= mark + 20, 15)
    finally:
        writer.stop.set()
        writer.join(5)
    live = cluster.running_member()
    target = live.revision()
    wait_until(lambda: watcher.store.current.revision >= target, 15, message="watcher caught up")
    expected = history(live.endpoint, RATE_LIMIT, b"/config/", b"/config0")
    # Resumed every time, never had to start over: the only relists after the first are
    # the ones that confirm a lagging member's answer (a watch header below the snapshot).
    assert watcher.counters["relists"] == 1 + watcher.counters["below_snapshot"] == len(relisted)
    # Such a relist jumps to the member's current state: the writes it spans arrive as
    # that state, not as events. Every other change arrives once, in etcd's order.
    assert applied == [e for e in expected if not any(lo < e[2] <= hi for lo, hi in relisted[1:])]
    assert watcher.store.current[RATE_LIMIT] == int(expected[-1][1])


def test_idle_healthy_stream_is_kept_alive_by_progress_requests(etcd, proxy, make_watcher):
    # A progress question every third of the bound: an answer may come up to 0.8 s late,
    # on a loaded machine, before the stream would count as dead.
    bound = 1.2
    watcher = make_watcher(proxy.endpoint, ETCD_DEAD_STREAM_SECONDS=bound)
    assert watcher.wait_synced(5)
    wait_until(lambda: watcher.connected, 5)
    connections = proxy.accepted
    # Several dead-stream bounds pass with no change at all; progress answers keep it alive.
    first_contact = watcher.last_contact
    wait_until(lambda: watcher.last_contact - first_contact > 3 * bound, 10, message="progress answers")
    assert watcher.counters["reconnects"] == 0 and proxy.accepted == connections
    assert watcher.staleness() < bound


def test_only_progress_answers_prove_freshness_and_as_of_their_question(etcd):
    client = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": etcd.endpoint}))
    stream = client.watch(b"/config/", b"/config0", etcd.revision() + 1)
    try:
        created = stream.get(timeout=5)
        assert created is not None and not created.events and created.asked_at == 0.0
        before = time.monotonic()
        stream.request_progress()
        middle = time.monotonic()
        stream.request_progress()
        after = time.monotonic()
        answer = stream.get(timeout=5)
        assert answer is not None and not answer.events
        # As of the oldest question out, not of the reply; both questions settled.
        assert before <= answer.asked_at <= middle and answer.complete
        second = stream.get(timeout=5)
        assert second is not None and not second.events and second.asked_at == 0.0
        etcd.etcdctl("put", RATE_LIMIT, "7")
        event = stream.get(timeout=5)
        assert event is not None and event.events and event.asked_at == 0.0
        stream.request_progress()  # answered, so a new question goes out
        assert stream.get(timeout=5).asked_at > after
    finally:
        stream.close()
        client.close()


def test_progress_answer_after_writes_outside_the_range_is_complete_only_from_ordering_servers(etcd):
    """etcd moved on (other keys) past where the stream started: the answer's revision is
    ahead of anything the stream delivered. Only a server that orders its answers after
    the stream's events (3.5.13+) says the stream is complete through it."""
    source = EtcdSource(Settings.from_env({"ETCD_ENDPOINTS": etcd.endpoint}), PREFIXES)
    start = etcd.revision() + 1
    for value in ("a", "b"):
        etcd.etcdctl("put", "/elsewhere/key", value)
    stream = source.watch(start, on_events=lambda events: None)
    try:
        client = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": etcd.endpoint}))
        try:  # the open /version and Maintenance.Status agree
            assert source.server_version == client.server_version(timeout=5)
        finally:
            client.close()
        assert not stream.get(timeout=5).events  # created
        stream.request_progress()
        answer = stream.get(timeout=5)
        assert answer is not None and not answer.events and answer.header_revision == start + 1
        assert answer.asked_at > 0
        assert answer.complete is ordered_progress(source.server_version)
    finally:
        stream.close()
        source.close()


def test_watcher_counts_an_answer_the_snapshot_covers_even_from_an_unordered_server(etcd, make_watcher):
    """A write outside the watched keys puts etcd's answers ahead of the stream; once a
    check has brought the snapshot to that revision, the answers prove it current again."""
    # A progress question every half bound (0.5 s): an answer may come up to 0.5 s late,
    # on a loaded machine, before the snapshot would count as stale and need a check.
    bound = 1.0
    watcher = make_watcher(etcd.endpoint, ETCD_DEAD_STREAM_SECONDS=60, CONFIG_STALENESS_SECONDS=bound)
    assert watcher.wait_synced(5)
    wait_until(lambda: watcher.connected and watcher.staleness() < bound, 5)
    etcd.etcdctl("put", "/elsewhere/key", "x")
    target = etcd.revision()
    wait_until(lambda: watcher.staleness() > bound or watcher.store.current.revision >= target, 5)
    watcher.ensure_fresh()  # a check, on a server whose answers are unordered
    assert watcher.store.current.revision == target
    checks = watcher.counters["checks"]
    # Answers at the snapshot's revision prove it current: no further check is needed.
    deadline = time.monotonic() + 3 * bound
    while time.monotonic() < deadline:
        assert watcher.staleness() < bound, watcher.staleness()
        watcher.ensure_fresh()
        time.sleep(0.05)  # sampling over a window of time is the point here
    assert watcher.counters["checks"] == checks


def test_progress_answer_on_a_catching_up_stream_proves_nothing_before_the_catch_up(etcd):
    client = EtcdClient(Settings.from_env({"ETCD_ENDPOINTS": etcd.endpoint}))
    start = etcd.revision() + 1
    for value in ("1", "2", "3"):
        etcd.etcdctl("put", RATE_LIMIT, value)
    last = etcd.revision()
    stream = client.watch(b"/config/", b"/config0", start)
    seen = start - 1
    try:
        stream.request_progress()
        while True:
            batch = stream.get(timeout=5)
            assert batch is not None, "stream went silent"
            if batch.events:
                seen = max(seen, max(e.mod_revision for e in batch.events))
            elif batch.asked_at and batch.complete:
                # Proof of freshness only once everything up to the answer was delivered.
                assert seen >= batch.header_revision == last
                break
            if seen >= last:
                stream.request_progress()
    finally:
        stream.close()
        client.close()


def test_catch_up_after_a_missed_delete_does_not_resurrect_the_old_value(etcd, proxy, make_watcher):
    from config_watch import MAINTENANCE_MODE

    etcd.etcdctl("put", MAINTENANCE_MODE, "true")
    watcher = make_watcher(proxy.endpoint, ETCD_DEAD_STREAM_SECONDS=60, ETCD_KEEPALIVE_SECONDS=60,
                           CONFIG_STALENESS_SECONDS=0.5)
    assert watcher.wait_synced(5) and watcher.store.current[MAINTENANCE_MODE] is True
    wait_until(lambda: watcher.connected, 5)
    proxy.stall()  # the watch misses what follows
    etcd.etcdctl("del", MAINTENANCE_MODE)  # maintenance over
    etcd.etcdctl("put", MAINTENANCE_MODE, "off")  # then a bad value
    wait_until(lambda: watcher.staleness() > 0.5, 5)
    snapshot = watcher.ensure_fresh()
    assert snapshot.revision == etcd.revision()
    assert snapshot[MAINTENANCE_MODE] is False


def test_lists_fall_back_to_grpc_when_the_json_gateway_is_off(tmp_path, make_watcher):
    from tools.etcd_server import EtcdServer

    with EtcdServer(data_dir=str(tmp_path / "nogw"), extra_args=["--enable-grpc-gateway=false"]) as server:
        server.etcdctl("put", RATE_LIMIT, "41")
        watcher = make_watcher(server.endpoint)
        assert watcher.wait_synced(5)
        assert watcher.store.current[RATE_LIMIT] == 41
        server.etcdctl("put", RATE_LIMIT, "42")
        wait_until(lambda: watcher.store.current[RATE_LIMIT] == 42, 10, message="watch running")


def test_asking_an_unreachable_members_version_does_not_hold_up_the_watch():
    """A member that accepts connections and never answers (a blackholed VM): the version
    lookup gives up within its short deadline, once, and the watch opens regardless."""
    with silent_endpoint() as endpoint:
        settings = Settings.from_env({"ETCD_ENDPOINTS": endpoint, "CONFIG_CHECK_TIMEOUT_SECONDS": "0.3",
                                      "ETCD_REQUEST_TIMEOUT_SECONDS": "3"})
        source = EtcdSource(settings, PREFIXES)
        started = time.monotonic()
        stream = source.watch(1, on_events=lambda events: None)
        try:
            elapsed = time.monotonic() - started
            assert source.server_version is None
            assert elapsed < 1.5, elapsed  # one 0.3 s try, not two 3 s ones
        finally:
            stream.close()
            source.close()
