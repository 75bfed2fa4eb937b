"""This process's id, without a system call each time it is asked.

The request path asks "is this still the process that made it?" of the runtime, the
rate limiter and the forwarder, on every request, and `os.getpid()` is a system call
each time (glibc no longer caches it). The id is read once at import and again in
every child forked through Python (`os.register_at_fork`), which is how gunicorn
makes its workers and multiprocessing its children.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def current_pid() -> int:
    """os.getpid(), as of the last fork."""
    return _pid
