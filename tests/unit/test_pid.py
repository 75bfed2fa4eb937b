"""The cached process id follows forks, as gunicorn's workers are made."""

from __future__ import annotations

import os

from config_watch._pid import current_pid
from gateway._process import PerProcess


def test_the_cached_pid_is_the_childs_after_a_fork():
    assert current_pid() == os.getpid()
    made = PerProcess(lambda: object())
    parents = made.get()
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report, then leave without running the parent's clean-ups
        try:
            ok = current_pid() == os.getpid() and made.peek() is None and made.get() is not parents
            os.write(write, b"ok" if ok else b"no")
        finally:
            os._exit(0)
    os.close(write)
    try:
        answer = os.read(read, 2)
    finally:
        os.close(read)
        os.waitpid(child, 0)
    assert answer == b"ok"
    assert current_pid() == os.getpid() and made.get() is parents
