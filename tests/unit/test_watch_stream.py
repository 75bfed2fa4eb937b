"""WatchStream's bookkeeping of what a response proves, on scripted etcd responses.

The real server is exercised in tests/integration; here the responses etcd may send in
rare orders (an answer overtaking a split catch-up, a dropped question) are played
exactly, as the protobuf messages etcd sends.
"""

from __future__ import annotations

import queue
import threading
import time

import pytest
from pyetcd import etcdrpc

from config_watch._etcd import WatchStream
from tests.support import wait_until

KEY = b"/config/services/api-gateway/rate-limit"


class ScriptedCall:
    """Stands in for the gRPC call: yields what the test feeds, records what is sent."""

    def __init__(self, requests) -> None:
        self.sent: list = []
        self.feed: queue.Queue = queue.Queue()
        # Drain the request iterator as gRPC would.
        threading.Thread(target=lambda: self.sent.extend(requests), daemon=True).start()

    def __iter__(self):
        while (item := self.feed.get()) is not None:
            yield item

    def cancel(self) -> None:
        self.feed.put(None)


class ScriptedStub:
    def Watch(self, requests, metadata):  # noqa: N802 (gRPC's name)
        self.call = ScriptedCall(requests)
        return self.call


def header(revision: int) -> etcdrpc.ResponseHeader:
    return etcdrpc.ResponseHeader(revision=revision)


def events(header_revision: int, *revisions: int) -> etcdrpc.WatchResponse:
    evs = [etcdrpc.kv_pb2.Event(type=etcdrpc.kv_pb2.Event.PUT,
                                kv=etcdrpc.kv_pb2.KeyValue(key=KEY, value=b"1", mod_revision=r))
           for r in revisions]
    return etcdrpc.WatchResponse(header=header(header_revision), events=evs)


def progress(revision: int) -> etcdrpc.WatchResponse:
    return etcdrpc.WatchResponse(header=header(revision), watch_id=-1)


@pytest.fixture
def open_stream():
    streams = []

    def make(start_revision: int, ordered: bool = False):
        stub = ScriptedStub()
        stream = WatchStream(stub, KEY, KEY + b"\0", start_revision, [], ordered_progress=ordered)
        streams.append(stream)
        call = stub.call

        def reply(response):
            call.feed.put(response)
            batch = stream.get(timeout=5)
            assert batch is not None
            return batch

        reply(etcdrpc.WatchResponse(header=header(start_revision - 1), created=True))
        return stream, reply, call

    yield make
    for s in streams:
        s.close()


def test_created_response_and_an_unasked_answer_prove_nothing(open_stream):
    stream, reply, _ = open_stream(11)
    assert reply(progress(10)).asked_at == 0.0  # nothing was asked


def test_answer_counts_as_of_the_oldest_question_out(open_stream):
    stream, reply, call = open_stream(11)
    first = time.monotonic()
    stream.request_progress()
    asked = time.monotonic()
    time.sleep(0.01)  # two questions at distinguishable times
    stream.request_progress()
    answer = reply(progress(10))
    assert first <= answer.asked_at <= asked and answer.complete
    assert reply(progress(10)).asked_at == 0.0  # both were settled by the first answer
    # Both questions went out: etcd drops one asked while a watch catches up.
    wait_until(lambda: sum(r.HasField("progress_request") for r in call.sent) == 2, 5)


def test_old_server_answer_ahead_of_the_delivered_events_proves_nothing(open_stream):
    stream, reply, _ = open_stream(11)  # the snapshot holds everything to 10
    stream.request_progress()
    assert not reply(progress(14)).complete  # etcd is at 14; events 11..14 may be on the way
    reply(events(14, 12, 14))
    stream.request_progress()
    assert reply(progress(14)).complete


def test_old_server_answer_within_the_delivered_revision_proves(open_stream):
    stream, reply, _ = open_stream(11)
    stream.request_progress()
    assert reply(progress(10)).complete  # nothing happened since the snapshot


def test_split_catch_up_does_not_count_as_complete_until_its_last_part(open_stream):
    stream, reply, _ = open_stream(11)
    # etcd stamps every part of a long catch-up with its current revision (3000).
    reply(events(3000, *range(11, 1011)))
    stream.request_progress()
    assert not reply(progress(3000)).complete  # overtook the rest of the catch-up
    reply(events(3000, *range(1011, 1500)))
    stream.request_progress()
    assert reply(progress(3000)).complete


def test_ordering_server_answer_proves_even_ahead_of_the_events(open_stream):
    stream, reply, _ = open_stream(11, ordered=True)
    stream.request_progress()
    assert reply(progress(14)).complete  # such a server answers only once caught up


def test_answer_owed_to_a_settled_question_is_not_taken_for_a_newer_one(open_stream):
    """q1 and q2 out, a1 settles both; q3 goes out before a2 (made before q3) is read."""
    stream, reply, _ = open_stream(11)
    stream.request_progress()
    stream.request_progress()
    assert reply(progress(10)).asked_at > 0  # a1
    time.sleep(0.01)  # q3 distinguishably later
    third = time.monotonic()
    stream.request_progress()
    assert reply(progress(10)).asked_at == 0.0  # a2: owed to q2, proves nothing about q3's time
    assert reply(progress(10)).asked_at >= third  # a3


def test_events_go_to_on_events_and_get_sees_only_the_sign_of_life():
    applied = []
    stub = ScriptedStub()
    stream = WatchStream(stub, KEY, KEY + b"\0", 11, [], on_events=applied.append)
    try:
        stub.call.feed.put(events(12, 12))
        batch = stream.get(timeout=5)
        assert batch is not None and batch.events == () and batch.header_revision == 12
        assert [[e.mod_revision for e in evs] for evs in applied] == [[12]]
    finally:
        stream.close()


def test_no_event_is_applied_once_close_returns():
    """close() waits for a batch being applied, then for the reader (bounded)."""
    applying, release = threading.Event(), threading.Event()
    applied = []

    def on_events(evs):
        applying.set()
        release.wait(5)
        applied.append(evs)

    stub = ScriptedStub()
    stream = WatchStream(stub, KEY, KEY + b"\0", 11, [], on_events=on_events)
    stub.call.feed.put(events(12, 12))
    assert applying.wait(5)
    closer = threading.Thread(target=stream.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # held by the batch being applied
    release.set()
    closer.join(5)
    assert not closer.is_alive() and len(applied) == 1
    assert not stream._reader.is_alive()  # joined
    stub.call.feed.put(events(13, 13))  # arrives after close: never applied
    assert len(applied) == 1
