"""Helpers shared by the tests."""

from __future__ import annotations

import contextlib
import socket
import time
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.01, message: str = "") -> T:
    """Poll `predicate` until it returns something truthy; fail with `message` at the deadline."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as exc:  # the condition may raise while the system settles
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message or predicate}"
                                 + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """An endpoint ("127.0.0.1:port") that accepts connections and never answers (a
    blackholed member): the kernel completes the handshakes, so every call to it waits
    out its own deadline."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        yield f"127.0.0.1:{silent.getsockname()[1]}"


def record_published(watcher) -> list:
    """Every snapshot `watcher`'s store publishes from now on, in order (the store is
    wrapped, not the watcher: events reach it by the path production uses)."""
    import threading

    published: list = []
    original = watcher.store.publish
    lock = threading.Lock()

    def publish(snapshot, restore=False):
        with lock:
            ok = original(snapshot, restore=restore)
            if ok:
                published.append(snapshot)
            return ok

    watcher.store.publish = publish
    return published
