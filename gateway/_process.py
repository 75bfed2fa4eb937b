"""Per-process state made on first use, and made anew in a forked child.

gunicorn imports the function's module in its master and then forks workers. A lock
held, a socket open or a counter kept in the master must not be shared by the
children, so each value remembers the pid that made it (as config_watch's runtime
does) and a child that finds another pid's value makes its own.
"""

from __future__ import annotations

import threading
from typing import Callable, Generic, TypeVar

from config_watch._pid import current_pid

T = TypeVar("T")


class PerProcess(Generic[T]):
    """`get(*args)` returns this process's value, made by `factory(*args)` on first use
    (later calls' arguments are ignored: the value lives as long as the process)."""

    def __init__(self, factory: Callable[..., T]) -> None:
        self._factory = factory
        # (pid, value): read as one object, so the fast path takes no lock.
        self._held: tuple[int, T] | None = None
        self._lock = threading.Lock()

    def get(self, *args) -> T:
        held = self._held
        if held is not None and held[0] == current_pid():
            return held[1]
        with self._lock:
            held = self._held
            if held is None or held[0] != current_pid():
                # Another process's value is dropped, not closed: its sockets belong to it.
                held = self._held = (current_pid(), self._factory(*args))
        return held[1]

    def peek(self) -> T | None:
        """This process's value if it was made, without making it."""
        held = self._held
        return held[1] if held is not None and held[0] == current_pid() else None

    def reset(self) -> None:
        """Forget the value (tests, and settings changed in place)."""
        with self._lock:
            self._held = None
