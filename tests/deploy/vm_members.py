"""etcd members run locally exactly as the etcd VMs run them: the member's own flags
come from templates/etcd-node-flags.sh (the file the startup script embeds), and etcd is
started through the VM's /usr/local/lib/etcd-run wrapper taken from the rendered startup
script, reading those flags and the shared etcd.flags. Only addresses and ports differ:
each member gets its own loopback address (127.0.0.11, .12, ...) standing for its
private IP, and free ports instead of 2379/2380/2381."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deploy_support import TEMPLATES, heredoc_body, render_startup_script
from tools.certs import TLSMaterial
from tools.etcd_server import etcd_binaries, free_port


@dataclass
class VMMember:
    name: str
    private_ip: str
    data_dir: Path
    work: Path
    runner: str  # the VM's etcd-run, its paths pointing into `work`
    tls: TLSMaterial
    cluster: "VMCluster"
    client_port: int = 0
    peer_port: int = 0
    metrics_port: int = 0
    proc: subprocess.Popen | None = None
    node_flags: str = ""

    def __post_init__(self) -> None:
        self.client_port = free_port()
        self.peer_port = free_port()
        self.metrics_port = free_port()

    @property
    def client_url(self) -> str:
        return f"https://{self.private_ip}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"https://{self.private_ip}:{self.peer_port}"

    def write_node_flags(self) -> subprocess.CompletedProcess:
        """What the startup script does at boot: run etcd-node-flags into node.flags."""
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ETCD")},
            "NODE_NAME": self.name, "PRIVATE_IP": self.private_ip, "DATA_DIR": str(self.data_dir),
            "INITIAL_CLUSTER": self.cluster.initial_cluster, "CLUSTER_TOKEN": self.cluster.token,
            "CLUSTER_CLIENT_URLS": self.cluster.client_urls,
            "CLIENT_PORT": str(self.client_port), "PEER_PORT": str(self.peer_port),
            "METRICS_PORT": str(self.metrics_port), "ETCDCTL": self.cluster.etcdctl_bin,
            "ETCDCTL_CACERT": self.tls.ca_cert, "ETCDCTL_CERT": self.tls.clients["root"].cert,
            "ETCDCTL_KEY": self.tls.clients["root"].key,
        }
        result = subprocess.run(["bash", str(self.cluster.node_flags_script)], env=env,
                                capture_output=True, text=True, timeout=30)
        if result.returncode == 0:
            self.node_flags = result.stdout
            (self.work / "node.flags").write_text(result.stdout)
        return result

    @property
    def initial_state(self) -> str:
        return next(line.split("=", 1)[1] for line in self.node_flags.splitlines()
                    if line.startswith("--initial-cluster-state="))

    def start(self, write_flags: bool = True) -> "VMMember":
        if write_flags:
            result = self.write_node_flags()
            assert result.returncode == 0, result.stderr
        log = open(self.work / "etcd.log", "ab")
        self.proc = subprocess.Popen(["bash", "-c", self.runner], stdout=log, stderr=log,
                                     start_new_session=True)
        log.close()
        return self

    def healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/health"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return b'"health":"true"' in resp.read()
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc is None or self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {(self.work / 'etcd.log').read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} not healthy within {timeout}s")
            time.sleep(0.05)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """A crash: SIGKILL, as when the VM is lost."""
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None

    def status(self) -> dict:
        out = self.cluster.etcdctl("endpoint", "status", "-w", "json", endpoints=self.client_url)
        return json.loads(out)[0]["Status"]


class VMCluster:
    """`size` members with the VM's flags, client and peer TLS, a static initial
    cluster and one shared server certificate whose SANs name every member."""

    def __init__(self, work: Path, tls: TLSMaterial, size: int = 3, token: str = "etcd-config") -> None:
        self.work = work
        self.tls = tls
        self.token = token
        self.etcd_bin, self.etcdctl_bin = etcd_binaries()
        rendered = render_startup_script(pki_dir=tls.directory)
        flags_file = work / "etcd.flags"
        flags_file.write_text(heredoc_body(rendered, "/etc/etcd/etcd.flags", "ETCD_FLAGS_EOF") + "\n")
        self.node_flags_script = work / "etcd-node-flags"
        self.node_flags_script.write_text(
            heredoc_body(rendered, "/usr/local/lib/etcd-node-flags", "ETCD_NODE_FLAGS_EOF"))
        assert self.node_flags_script.read_text() == (TEMPLATES / "etcd-node-flags.sh").read_text()
        runner = heredoc_body(rendered, "/usr/local/lib/etcd-run", "ETCD_RUN_EOF")
        self.members: list[VMMember] = []
        for i in range(size):
            member_work = work / f"member-{i}"
            member_work.mkdir()
            text = runner
            for vm_path, here in (("/etc/etcd/node.flags", member_work / "node.flags"),
                                  ("/etc/etcd/etcd.flags", flags_file),
                                  ("/usr/local/bin/etcd", Path(self.etcd_bin))):
                assert vm_path in text, f"etcd-run no longer reads {vm_path}"
                text = text.replace(vm_path, str(here))
            self.members.append(VMMember(f"{token}-{i}", f"127.0.0.{11 + i}", member_work / "data",
                                         member_work, text, tls, self))
        self.initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        self.client_urls = ",".join(m.client_url for m in self.members)

    def etcdctl(self, *args: str, endpoints: str | None = None, client: str = "root",
                check: bool = True, timeout: float = 30) -> str:
        cmd = [self.etcdctl_bin, f"--endpoints={endpoints or self.client_urls}",
               f"--cacert={self.tls.ca_cert}", f"--cert={self.tls.clients[client].cert}",
               f"--key={self.tls.clients[client].key}", "--dial-timeout=2s", "--command-timeout=5s", *args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL")}
        out = subprocess.run(cmd, env={**env, "ETCDCTL_API": "3"}, capture_output=True, text=True,
                             timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"etcdctl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def leader(self) -> VMMember:
        for m in self.members:
            if m.running():
                try:
                    status = m.status()
                except AssertionError:
                    continue
                if status["leader"] == status["header"]["member_id"]:
                    return m
        raise AssertionError("no member is the leader")

    def close(self) -> None:
        for m in self.members:
            m.kill()
