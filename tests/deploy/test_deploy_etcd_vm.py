"""The etcd VM's security setup, run here against a local etcd: the flags and the
user/role bootstrap are taken from the startup script exactly as Terraform renders it
(the etcd-run wrapper's own flag parsing included), then the access rules are proven
with etcdctl."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from deploy_support import BOOTSTRAP_PASSWORDS, TEMPLATES, heredoc_body, render_startup_script
from tools.certs import TLSMaterial, make_tls_material
from tools.etcd_server import EtcdServer

pytestmark = pytest.mark.slow

KEY = "/config/services/api-gateway/features/new-user-onboarding"
PASSWORDS = BOOTSTRAP_PASSWORDS


def flags_via_etcd_run(rendered: str, work: Path) -> list[str]:
    """Run the VM's /usr/local/lib/etcd-run (from the rendered startup script) with
    its files redirected into `work` and a stand-in etcd that prints its argv."""
    flags_file = work / "etcd.flags"
    flags_file.write_text(heredoc_body(rendered, "/etc/etcd/etcd.flags", "ETCD_FLAGS_EOF") + "\n")
    node_flags = work / "node.flags"  # EtcdServer supplies name, data dir and URLs
    node_flags.write_text("# node flags come from EtcdServer in this test\n")
    printer = work / "print-args"
    printer.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@"\n')
    printer.chmod(printer.stat().st_mode | stat.S_IXUSR)
    runner = heredoc_body(rendered, "/usr/local/lib/etcd-run", "ETCD_RUN_EOF")
    for vm_path, here in (("/etc/etcd/node.flags", node_flags), ("/etc/etcd/etcd.flags", flags_file),
                          ("/usr/local/bin/etcd", printer)):
        assert vm_path in runner, f"etcd-run no longer reads {vm_path}"
        runner = runner.replace(vm_path, str(here))
    out = subprocess.run(["bash", "-c", runner], capture_output=True, text=True, check=True, timeout=10)
    return [arg for arg in out.stdout.split("\0") if arg]


@dataclass
class Cluster:
    server: EtcdServer
    tls: TLSMaterial
    flags: list[str]
    bootstrap: Path
    work: Path
    first_bootstrap: subprocess.CompletedProcess | None = None

    def bootstrap_env(self, **extra) -> dict:
        return {
            **os.environ,
            "ETCDCTL": self.server.etcdctl_bin,
            "ETCDCTL_ENDPOINTS": self.server.client_url,
            "ETCDCTL_CACERT": self.tls.ca_cert,
            "ETCDCTL_CERT": self.tls.clients["root"].cert,
            "ETCDCTL_KEY": self.tls.clients["root"].key,
            **PASSWORDS,
            **extra,
        }

    def run_bootstrap(self, **extra) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(self.bootstrap)], env=self.bootstrap_env(**extra),
                              capture_output=True, text=True, timeout=60)

    def etcdctl(self, client: str | None, *args: str, user: str | None = None,
                password: str | None = None) -> subprocess.CompletedProcess:
        cmd = [self.server.etcdctl_bin, f"--endpoints={self.server.client_url}",
               f"--cacert={self.tls.ca_cert}", "--dial-timeout=2s", "--command-timeout=3s"]
        if client:
            cmd += [f"--cert={self.tls.clients[client].cert}", f"--key={self.tls.clients[client].key}"]
        if user:
            cmd += [f"--user={user}", f"--password={password}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL")}
        return subprocess.run(cmd + list(args), env={**env, "ETCDCTL_API": "3"},
                              capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("etcd-vm")
    pki = work / "pki"
    # "function": the function's certificate as Terraform issues it, with no Common Name.
    tls = make_tls_material(pki, client_names=("root", "gateway", "operator", "stranger"),
                            no_cn_clients=("function",))
    rendered = render_startup_script(pki_dir=str(pki))
    flags = flags_via_etcd_run(rendered, work)
    bootstrap = work / "etcd-bootstrap"
    bootstrap.write_text(heredoc_body(rendered, "/usr/local/lib/etcd-bootstrap", "ETCD_BOOTSTRAP_EOF"))
    server = EtcdServer(tls=tls.etcd_tls("root"), extra_args=flags, log_path=str(work / "etcd.log"))
    try:
        server.start()
        c = Cluster(server, tls, flags, bootstrap, work)
        first = c.run_bootstrap()
        assert first.returncode == 0, first.stdout + first.stderr
        c.first_bootstrap = first
        yield c
    finally:
        server.close()


def test_vm_runs_etcd_with_client_tls_and_periodic_compaction(cluster):
    assert "--client-cert-auth=true" in cluster.flags
    assert f"--trusted-ca-file={cluster.tls.ca_cert}" in cluster.flags
    assert f"--cert-file={cluster.tls.server_cert}" in cluster.flags
    assert f"--key-file={cluster.tls.server_key}" in cluster.flags
    assert "--auto-compaction-mode=periodic" in cluster.flags
    assert any(f.startswith("--auto-compaction-retention=") for f in cluster.flags)
    assert not any(f.startswith("#") or f != f.strip() for f in cluster.flags)
    assert cluster.server.running()


def test_embedded_bootstrap_is_the_tested_file_verbatim(cluster):
    assert cluster.bootstrap.read_text() == (TEMPLATES / "etcd-bootstrap.sh").read_text()


def test_bootstrap_turns_auth_on_and_is_idempotent(cluster):
    assert "authentication enabled" in cluster.first_bootstrap.stdout
    status = cluster.etcdctl("root", "auth", "status")
    assert "Authentication Status: true" in status.stdout, status.stderr
    again = cluster.run_bootstrap()
    assert again.returncode == 0, again.stderr
    assert "authentication already enabled" in again.stdout
    assert "created" not in again.stdout


def test_operator_can_write_the_config_key_space(cluster):
    put = cluster.etcdctl("operator", "put", KEY, "true")
    assert put.returncode == 0 and "OK" in put.stdout, put.stderr
    put = cluster.etcdctl("operator", "put", "/config/global/maintenance-mode", "false",
                          user="operator", password=PASSWORDS["ETCD_OPERATOR_PASSWORD"])
    assert put.returncode == 0, put.stderr


@pytest.mark.parametrize("auth", ["password", "certificate"])
def test_gateway_reads_config_but_cannot_write(cluster, auth):
    assert cluster.etcdctl("operator", "put", KEY, "true").returncode == 0
    creds = {"user": "gateway", "password": PASSWORDS["ETCD_GATEWAY_PASSWORD"]} if auth == "password" else {}
    read = cluster.etcdctl("gateway", "get", "/config/", "--prefix", **creds)
    assert read.returncode == 0, read.stderr
    assert KEY in read.stdout and "true" in read.stdout
    write = cluster.etcdctl("gateway", "put", KEY, "false", **creds)
    assert write.returncode != 0
    assert "permission denied" in write.stderr
    delete = cluster.etcdctl("gateway", "del", KEY, **creds)
    assert delete.returncode != 0 and "permission denied" in delete.stderr
    outside = cluster.etcdctl("gateway", "get", "/secrets/elsewhere", **creds)
    assert outside.returncode != 0 and "permission denied" in outside.stderr
    assert cluster.etcdctl("root", "get", KEY, "--print-value-only").stdout.strip() == "true"


def test_operator_tool_writes_audited_changes_only_operators_can_touch_the_trail(cluster):
    """The operator tool with the operator's certificate, as on the VM: each change and
    its audit entry in one transaction; the gateway may neither read nor write /audit/."""
    import sys

    tls = cluster.tls
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD", "CONFIG_"))}
    env.update(ETCD_ENDPOINTS=cluster.server.client_url, ETCD_CACERT=tls.ca_cert,
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))

    def tool(client: str, *args: str, **extra) -> subprocess.CompletedProcess:
        certs = {"ETCD_CERT": tls.clients[client].cert, "ETCD_KEY": tls.clients[client].key}
        return subprocess.run([sys.executable, "-m", "config_watch", *args], env={**env, **certs, **extra},
                              capture_output=True, text=True, timeout=60)

    change = tool("operator", "set", "/config/services/api-gateway/rate-limit", "222", "--reason", "vm test")
    assert change.returncode == 0, change.stderr
    assert "reason: vm test" in tool("operator", "audit", "--limit", "1").stdout
    trail = cluster.etcdctl("operator", "get", "/audit/", "--prefix", "--keys-only")
    assert trail.returncode == 0 and "/audit/" in trail.stdout

    creds = {"user": "gateway", "password": PASSWORDS["ETCD_GATEWAY_PASSWORD"]}
    for args in (("put", "/audit/forged", "x"), ("get", "/audit/", "--prefix"), ("del", "/audit/", "--prefix")):
        denied = cluster.etcdctl("gateway", *args, **creds)
        assert denied.returncode != 0 and "permission denied" in denied.stderr, args
    refused = tool("function", "set", "/config/services/api-gateway/rate-limit", "1",
                   ETCD_USERNAME="gateway", ETCD_PASSWORD=PASSWORDS["ETCD_GATEWAY_PASSWORD"])
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "etcd denied permission to user 'gateway'" in refused.stderr
    value = cluster.etcdctl("root", "get", "/config/services/api-gateway/rate-limit", "--print-value-only")
    assert value.stdout.strip() == "222"


@pytest.mark.parametrize("auth", ["password", "certificate"])
def test_gateway_writes_its_membership_records_and_nothing_else(cluster, auth):
    creds = {"user": "gateway", "password": PASSWORDS["ETCD_GATEWAY_PASSWORD"]} if auth == "password" else {}
    granted = cluster.etcdctl("gateway", "lease", "grant", "10", **creds)
    assert granted.returncode == 0, granted.stderr
    lease = granted.stdout.split()[1]  # "lease 694d... granted with TTL(10s)"
    member = f"/instances/api-gateway/test-{auth}"
    put = cluster.etcdctl("gateway", "put", member, "{}", f"--lease={lease}", **creds)
    assert put.returncode == 0, put.stderr
    keepalive = cluster.etcdctl("gateway", "lease", "keep-alive", "--once", lease, **creds)
    assert keepalive.returncode == 0, keepalive.stderr
    listed = cluster.etcdctl("gateway", "get", "/instances/api-gateway/", "--prefix", "--keys-only", **creds)
    assert member in listed.stdout, listed.stderr
    for key in ("/instances/data-processor/x", "/instances/api-gateway", "/config/global/maintenance-mode"):
        write = cluster.etcdctl("gateway", "put", key, "x", **creds)
        assert write.returncode != 0 and "permission denied" in write.stderr, key
    revoked = cluster.etcdctl("gateway", "lease", "revoke", lease, **creds)
    assert revoked.returncode == 0, revoked.stderr
    assert member not in cluster.etcdctl("root", "get", member).stdout


def test_wrong_password_is_rejected(cluster):
    read = cluster.etcdctl("gateway", "get", KEY, user="gateway", password="wrong")
    assert read.returncode != 0
    assert "authentication failed" in read.stderr


def test_certificate_of_an_unknown_user_gets_nothing(cluster):
    read = cluster.etcdctl("stranger", "get", KEY)
    assert read.returncode != 0
    assert "permission denied" in read.stderr or "user name not found" in read.stderr


def test_connection_without_client_certificate_is_refused(cluster):
    with_cert = cluster.etcdctl("gateway", "get", KEY)
    assert with_cert.returncode == 0, with_cert.stderr  # same command, only the cert differs
    without = cluster.etcdctl(None, "get", KEY)
    assert without.returncode != 0
    assert "bad certificate" in without.stderr or "certificate required" in without.stderr, without.stderr


def test_bootstrap_refuses_to_run_without_passwords(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETCD", "ETCDCTL"))}
    env.update(ETCDCTL_ENDPOINTS="https://127.0.0.1:1", ETCDCTL_CACERT="x", ETCDCTL_CERT="x",
               ETCDCTL_KEY="x", ETCD_ROOT_PASSWORD="x", ETCD_OPERATOR_PASSWORD="x",
               ETCDCTL=str(tmp_path / "must-not-run"))
    result = subprocess.run(["bash", str(TEMPLATES / "etcd-bootstrap.sh")], env=env,
                            capture_output=True, text=True, timeout=10)
    assert result.returncode != 0
    assert "ETCD_GATEWAY_PASSWORD" in result.stderr


def test_the_function_reads_its_config_from_the_vm_etcd_and_cannot_write(cluster, tmp_path):
    """The gateway itself, under functions-framework, with the settings Terraform gives it."""
    import requests

    from config_watch import AuthError, Settings
    from config_watch._etcd import EtcdClient
    from tools.function_server import FunctionServer

    assert cluster.etcdctl("operator", "put", "/config/services/api-gateway/rate-limit", "321").returncode == 0
    env = {
        "ETCD_ENDPOINTS": cluster.server.client_url,
        "ETCD_CACERT": cluster.tls.ca_cert,
        "ETCD_CERT": cluster.tls.clients["function"].cert,
        "ETCD_KEY": cluster.tls.clients["function"].key,
        "ETCD_USERNAME": "gateway",
        "ETCD_PASSWORD": PASSWORDS["ETCD_GATEWAY_PASSWORD"],
        "CONFIG_INITIAL_WAIT_SECONDS": "3",
    }
    with FunctionServer(env, workers=1, log_path=str(tmp_path / "fn.log")) as fn:
        response = requests.get(fn.url + "/", timeout=10)
        assert response.status_code == 200 and response.headers["RateLimit-Limit"] == "321"
        assert requests.get(fn.url + "/_status", timeout=10).json()["synced"] is True
        # It registered itself as a member of the fleet, with its own credentials.
        deadline = time.monotonic() + 10
        while not (membership := requests.get(fn.url + "/_status", timeout=10).json()["rate_limit"])["registered"]:
            assert time.monotonic() < deadline, membership
            time.sleep(0.05)
        assert membership["key"] in cluster.etcdctl("root", "get", "/instances/api-gateway/", "--prefix").stdout
    client = EtcdClient(Settings.from_env(env))
    try:
        with pytest.raises(AuthError, match="permission denied"):
            client.put("/config/services/api-gateway/rate-limit", "1", timeout=5)
    finally:
        client.close()
