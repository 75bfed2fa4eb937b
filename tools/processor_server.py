"""The data processor served as production runs it (`python -m processor`), on a free port."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tools.etcd_server import free_port
from tools.function_server import stop_process_group

ROOT = Path(__file__).resolve().parent.parent


class ProcessorServer:
    """`python -m processor` with the given environment, in its own process group.

    `start()` returns once `/_status` answers and the watcher has synced (unless
    `wait_synced=False`).
    """

    def __init__(self, env: dict[str, str], log_path: str | None = None, port: int | None = None,
                 cwd: str | None = None) -> None:
        self.port = port or free_port()
        self.cwd = cwd or str(ROOT)  # the code that runs: `python -m` imports from here
        self.env = {**os.environ, "CONFIG_SERVICE": "data-processor", **env,
                    "PROCESSOR_PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0, wait_synced: bool = True) -> "ProcessorServer":
        if self.proc is not None and self.proc.poll() is None:
            # A second start would orphan the first server: stop() knows only the last.
            raise RuntimeError("this ProcessorServer is already running")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, "-m", "processor"], cwd=self.cwd, env=self.env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if out is not subprocess.DEVNULL:
            out.close()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"processor exited with {self.proc.returncode}")
            try:
                if self.status(timeout=1.0)["synced"] or not wait_synced:
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"processor not serving within {timeout}s")
            time.sleep(0.02)

    def status(self, timeout: float = 5.0) -> dict:
        with urllib.request.urlopen(self.url + "/_status", timeout=timeout) as r:
            return json.loads(r.read())

    def pids(self) -> list[int]:
        """The gunicorn master and its worker."""
        out = subprocess.run(["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def terminate(self) -> None:
        """SIGTERM to the gunicorn master (as systemd or Ctrl-C would send)."""
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, grace=15)  # time to drain its jobs
        self.proc = None

    def __enter__(self) -> "ProcessorServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
