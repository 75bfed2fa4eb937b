"""The three-member etcd cluster (etcd_cluster_size = 3) run here with exactly the flags
the VMs use: client and peer TLS, a static initial cluster, and each member's initial
state decided by templates/etcd-node-flags.sh at every start. The gateway (real
functions-framework, two workers) serves throughout while a follower and then the
leader are killed; rebooted members rejoin with their data."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import uuid
from pathlib import Path

import pytest
import requests

from deploy_support import BOOTSTRAP_PASSWORDS, REPO, TEMPLATES, heredoc_body, render_startup_script
from tests.support import wait_until
from tools.certs import make_tls_material
from tools.etcd_server import etcd_binaries, free_port
from tools.function_server import FunctionServer
from vm_members import VMCluster

pytestmark = pytest.mark.slow

RATE_LIMIT = "/config/services/api-gateway/rate-limit"
PASSWORDS = BOOTSTRAP_PASSWORDS


@pytest.fixture
def tls(tmp_path):
    # One server certificate for every member, as Terraform issues it.
    hosts = ("127.0.0.1", "localhost", "127.0.0.11", "127.0.0.12", "127.0.0.13")
    return make_tls_material(tmp_path / "pki", client_names=("root", "operator"),
                             no_cn_clients=("function",), server_hosts=hosts)


@pytest.fixture
def cluster(tmp_path, tls):
    c = VMCluster(tmp_path, tls)
    try:
        yield c
    finally:
        c.close()


def bootstrap_auth(cluster: VMCluster, member) -> None:
    """Member 0's boot: the VM's etcd-bootstrap, against that member."""
    script = cluster.work / "etcd-bootstrap"
    script.write_text(heredoc_body(render_startup_script(pki_dir=cluster.tls.directory),
                                   "/usr/local/lib/etcd-bootstrap", "ETCD_BOOTSTRAP_EOF"))
    env = {**os.environ, **PASSWORDS, "ETCDCTL": cluster.etcdctl_bin,
           "ETCDCTL_ENDPOINTS": member.client_url, "ETCDCTL_CACERT": cluster.tls.ca_cert,
           "ETCDCTL_CERT": cluster.tls.clients["root"].cert, "ETCDCTL_KEY": cluster.tls.clients["root"].key}
    result = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def start_cluster(cluster: VMCluster) -> None:
    """The first boot: members 0 and 1 come up together and form the cluster (quorum
    2 of 3); member 2 boots later and joins it."""
    m0, m1, m2 = cluster.members
    for m in (m0, m1):
        result = m.write_node_flags()
        assert result.returncode == 0, result.stderr
    for m in (m0, m1):
        m.start(write_flags=False)
    for m in (m0, m1):
        m.wait_healthy()
    m2.start()
    m2.wait_healthy()
    assert [m.initial_state for m in cluster.members] == ["new", "new", "existing"]


def put(cluster: VMCluster, key: str, value: str) -> int:
    """Write as the operator through any live member (retrying across an election);
    returns the revision of the write."""
    def attempt():
        live = ",".join(m.client_url for m in cluster.members if m.running())
        out = cluster.etcdctl("put", key, value, "-w", "json", endpoints=live, client="operator", check=False)
        return json.loads(out)["header"]["revision"] if out.strip() else None

    return wait_until(attempt, 30, interval=0.2, message=f"put {key}={value}")


def fresh_get(url: str) -> requests.Response:
    with requests.Session() as s:
        return s.get(url, headers={"Connection": "close", "X-Api-Key": uuid.uuid4().hex}, timeout=10)


def wait_both_workers_at(server: FunctionServer, revision: int, timeout: float = 30) -> None:
    seen: dict[int, int] = {}

    def both_current():
        status = fresh_get(server.url + "/_status").json()
        seen[status["pid"]] = status["revision"]
        return len(seen) == 2 and all(rev >= revision for rev in seen.values())

    wait_until(both_current, timeout, message=f"both workers at revision {revision}: {seen}")


class Load:
    """Requests to the gateway in a loop; every answer must be a 200."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.stop = threading.Event()
        self.answers = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self.run, name="gateway-load", daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.02):
            try:
                response = fresh_get(self.url + "/")
                if response.status_code != 200:
                    self.failures.append(f"{response.status_code} {response.text[:200]}")
            except requests.RequestException as exc:
                self.failures.append(repr(exc))
            self.answers += 1

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(15)


def test_node_flags_script_embedded_verbatim():
    rendered = render_startup_script()
    embedded = heredoc_body(rendered, "/usr/local/lib/etcd-node-flags", "ETCD_NODE_FLAGS_EOF")
    assert embedded == (TEMPLATES / "etcd-node-flags.sh").read_text()


def test_members_use_peer_tls(cluster):
    for m in cluster.members:
        result = m.write_node_flags()
        assert result.returncode == 0, result.stderr
        assert f"--listen-peer-urls=https://{m.private_ip}:{m.peer_port}" in m.node_flags
    flags = (cluster.work / "etcd.flags").read_text()
    for flag in ("--peer-client-cert-auth=true", f"--peer-trusted-ca-file={cluster.tls.ca_cert}",
                 f"--peer-cert-file={cluster.tls.server_cert}", f"--peer-key-file={cluster.tls.server_key}"):
        assert flag in flags.splitlines()


def test_three_members_survive_losing_a_follower_then_the_leader(cluster, tls, tmp_path):
    start_cluster(cluster)
    members = cluster.etcdctl("member", "list")
    assert members.count(", started, ") == 3, members
    bootstrap_auth(cluster, cluster.members[0])
    put(cluster, RATE_LIMIT, "101")

    env = {
        "ETCD_ENDPOINTS": cluster.client_urls,
        "ETCD_CACERT": tls.ca_cert,
        "ETCD_CERT": tls.clients["function"].cert,
        "ETCD_KEY": tls.clients["function"].key,
        "ETCD_USERNAME": "gateway",
        "ETCD_PASSWORD": PASSWORDS["ETCD_GATEWAY_PASSWORD"],
        "CONFIG_INITIAL_WAIT_SECONDS": "3",
        "ETCD_DEAD_STREAM_SECONDS": "1.5",
        "ETCD_REQUEST_TIMEOUT_SECONDS": "1",
        "CONFIG_STALENESS_SECONDS": "2",
        "CONFIG_CHECK_TIMEOUT_SECONDS": "0.5",
    }
    with FunctionServer(env, workers=2, log_path=str(tmp_path / "gateway.log")) as server:
        assert fresh_get(server.url + "/").headers["RateLimit-Limit"] == "101"
        with Load(server.url) as load:
            # A follower dies; the other two keep quorum.
            leader = cluster.leader()
            follower = next(m for m in cluster.members if m is not leader)
            follower.kill()
            wait_both_workers_at(server, put(cluster, RATE_LIMIT, "102"))

            # It reboots and rejoins with its data: never initialised again.
            follower.start()
            assert follower.initial_state == "existing"
            follower.wait_healthy()

            # Now the leader dies; the other two elect a new one.
            leader.kill()
            revision = put(cluster, RATE_LIMIT, "103")
            assert cluster.leader() is not leader
            wait_both_workers_at(server, revision)
            for _ in range(4):
                assert fresh_get(server.url + "/").headers["RateLimit-Limit"] == "103"
        assert load.answers > 20, "the load loop barely ran"
        assert load.failures == [], load.failures[:5]

    leader.start()
    assert leader.initial_state == "existing"
    leader.wait_healthy()
    assert cluster.etcdctl("member", "list").count(", started, ") == 3
    value = cluster.etcdctl("get", RATE_LIMIT, "--print-value-only", endpoints=leader.client_url)
    assert value.strip() == "103"


def test_an_empty_member_never_joins_in_place_of_one_that_had_data(cluster):
    start_cluster(cluster)
    lost = cluster.members[2]
    lost.kill()
    shutil.rmtree(lost.data_dir)  # its disk is gone; the cluster still lists it as started
    result = lost.write_node_flags()
    assert result.returncode == 3
    assert "member remove" in result.stderr and "member add" in result.stderr

    # The runbook: remove it, add it again, boot it.
    member_id = next(line.split(",")[0] for line in cluster.etcdctl("member", "list").splitlines()
                     if f", {lost.name}, " in line)
    cluster.etcdctl("member", "remove", member_id, endpoints=cluster.members[0].client_url)
    # etcd refuses an add until the remaining members have been connected for 5 s
    # ("unhealthy cluster"); the runbook says to retry.
    wait_until(lambda: "added" in cluster.etcdctl("member", "add", lost.name, f"--peer-urls={lost.peer_url}",
                                                  endpoints=cluster.members[0].client_url, check=False),
               30, interval=0.5, message="member add")
    lost.start()
    assert lost.initial_state == "existing"
    lost.wait_healthy()
    assert cluster.etcdctl("member", "list").count(", started, ") == 3


def node_flags(tmp_path, **env) -> subprocess.CompletedProcess:
    base = {"NODE_NAME": "etcd-config-1", "PRIVATE_IP": "10.10.0.3", "DATA_DIR": str(tmp_path / "data"),
            "INITIAL_CLUSTER": "etcd-config-0=https://10.10.0.2:2380,etcd-config-1=https://10.10.0.3:2380",
            "CLUSTER_TOKEN": "etcd-config", "CLUSTER_CLIENT_URLS": "https://127.0.0.1:1,https://10.10.0.3:2379",
            "ETCDCTL": etcd_binaries()[1], "PATH": os.environ["PATH"]}
    return subprocess.run(["bash", str(TEMPLATES / "etcd-node-flags.sh")], env={**base, **env},
                          capture_output=True, text=True, timeout=30)


def test_node_flags_of_a_member_with_data_rejoin_without_asking_anyone(tmp_path):
    (tmp_path / "data" / "member" / "wal").mkdir(parents=True)
    result = node_flags(tmp_path, ETCDCTL=str(tmp_path / "no-etcdctl"))  # so no probe can be made
    assert result.returncode == 0, result.stderr
    assert "--initial-cluster-state=existing" in result.stdout.splitlines()
    assert "--listen-peer-urls=https://10.10.0.3:2380" in result.stdout.splitlines()


def test_node_flags_of_an_empty_member_with_no_cluster_running_bootstrap_it(tmp_path):
    result = node_flags(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--initial-cluster-state=new" in result.stdout.splitlines()


def test_node_flags_never_guess_when_they_cannot_ask(tmp_path):
    result = node_flags(tmp_path, ETCDCTL=str(tmp_path / "no-etcdctl"))
    assert result.returncode == 2 and "not found" in result.stderr


def test_node_flags_refuse_a_member_missing_from_the_initial_cluster(tmp_path):
    result = node_flags(tmp_path, NODE_NAME="etcd-config-2")
    assert result.returncode == 2 and "not in INITIAL_CLUSTER" in result.stderr


def test_restore_runbook_on_three_members(cluster, tls, tmp_path):
    """README's restore runbook on the three members: backup, more writes, stop all,
    bump once, install the same file on each (settings from its node.flags), start."""
    start_cluster(cluster)
    bootstrap_auth(cluster, cluster.members[0])
    put(cluster, RATE_LIMIT, "1")
    snapshot = tmp_path / "backup.db"
    cluster.etcdctl("snapshot", "save", str(snapshot), endpoints=cluster.members[0].client_url)
    seen = put(cluster, RATE_LIMIT, "2")
    for m in cluster.members:
        m.kill()

    restore = Path(REPO, "scripts", "restore.sh")
    etcd_dir = Path(cluster.etcd_bin).parent
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("ETCD")},
           "ETCD": cluster.etcd_bin, "ETCDCTL": cluster.etcdctl_bin, "ETCDUTL": str(etcd_dir / "etcdutl"),
           "RESTORE_CACERT": tls.ca_cert, "RESTORE_SERVER_CERT": tls.server_cert, "RESTORE_SERVER_KEY": tls.server_key,
           "RESTORE_ROOT_CERT": tls.clients["root"].cert, "RESTORE_ROOT_KEY": tls.clients["root"].key,
           "RESTORE_PORT": str(free_port()), "RESTORE_PEER_PORT": str(free_port()),
           "RESTORE_METRICS_PORT": str(free_port()), "ETCD_SERVICE": "", "RESTORE_OWNER": ""}
    bumped = tmp_path / "bumped.db"
    result = subprocess.run(["bash", str(restore), "bump", str(snapshot), str(bumped), "--above", str(seen),
                             "--margin", "10"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    revision = int(result.stdout)
    for m in cluster.members:
        result = subprocess.run(["bash", str(restore), "install", str(bumped), "--node-flags", str(m.work / "node.flags")],
                                env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    for m in cluster.members:
        m.start()
    for m in cluster.members:
        m.wait_healthy()
        assert m.initial_state == "existing"
        assert m.status()["header"]["revision"] == revision > seen
    assert cluster.etcdctl("member", "list").count(", started, ") == 3
    assert cluster.etcdctl("get", RATE_LIMIT, "--print-value-only").strip() == "1"
    assert "Authentication Status: true" in cluster.etcdctl("auth", "status")
