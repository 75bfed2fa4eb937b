"""The gateway served by the real functions-framework, as a subprocess on a free port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tools.etcd_server import free_port

ROOT = Path(__file__).resolve().parent.parent


def stop_process_group(proc: subprocess.Popen, grace: float) -> None:
    """Stop a server started in its own session: SIGTERM (after SIGCONT, in case a test
    froze it), SIGKILL after `grace` seconds, and SIGKILL to the group at the end, since
    gunicorn's workers outlive a killed master for a moment."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGCONT)
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class FunctionServer:
    """`functions-framework --target api_gateway` with the given environment.

    `start()` returns once the port accepts connections, without sending a request:
    the first request belongs to the caller (cold-start behaviour is under test).
    """

    def __init__(self, env: dict[str, str], workers: int = 2, threads: int | None = None,
                 target: str = "api_gateway", source: str | None = None, log_path: str | None = None) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "WORKERS": str(workers), "PYTHONUNBUFFERED": "1"}
        if threads is not None:
            self.env["THREADS"] = str(threads)
        self.target = target
        self.source = source
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.started_at: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "FunctionServer":
        if self.proc is not None and self.proc.poll() is None:
            # A second start would orphan the first server: stop() knows only the last.
            raise RuntimeError("this FunctionServer is already running")
        cmd = [sys.executable, "-m", "functions_framework", "--target", self.target,
               "--host", "127.0.0.1", "--port", str(self.port)]
        if self.source:
            cmd += ["--source", self.source]
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if out is not subprocess.DEVNULL:
            out.close()
        self.wait_listening(timeout)
        return self

    def wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"functions-framework exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.01)
        raise RuntimeError(f"functions-framework not listening within {timeout}s")

    def pids(self) -> list[int]:
        """The gunicorn master and its workers."""
        if not self.proc:
            return []
        out = subprocess.run(["pgrep", "-g", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def signal_all(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, grace=10)
        self.proc = None

    def __enter__(self) -> "FunctionServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
