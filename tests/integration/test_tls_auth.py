"""The gateway against an etcd configured like the VM: client-cert TLS and auth enabled."""

from __future__ import annotations

import logging
import os

import functions_framework
import pytest

from config_watch import RATE_LIMIT, AuthError, Settings
from config_watch._etcd import EtcdClient
from tests.support import wait_until
from tools.certs import make_tls_material
from tools.etcd_server import EtcdServer
from tools.function_server import FunctionServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GATEWAY_PASSWORD = "gateway-secret"


@pytest.fixture
def secure_etcd(tmp_path):
    # "function": the gateway's certificate as Terraform makes it, with no Common Name.
    tls = make_tls_material(tmp_path / "pki", client_names=("root", "gateway"), no_cn_clients=("function",))
    server = EtcdServer(data_dir=str(tmp_path / "etcd-data"), tls=tls.etcd_tls(client="root"),
                        log_path=str(tmp_path / "etcd.log"))
    server.start()
    try:
        for args in (
            ("user", "add", "root", "--new-user-password=root-secret"),
            ("role", "add", "config-reader"),
            ("role", "grant-permission", "config-reader", "read", "/config/", "--prefix=true"),
            ("user", "add", "gateway", f"--new-user-password={GATEWAY_PASSWORD}"),
            ("user", "grant-role", "gateway", "config-reader"),
            ("put", RATE_LIMIT, "61"),
            ("auth", "enable"),
        ):
            server.etcdctl(*args)
        yield server, tls
    finally:
        server.close()


def gateway_env(server, tls, cert="function", **overrides) -> dict[str, str]:
    env = {
        "ETCD_ENDPOINTS": f"https://127.0.0.1:{server.client_port}",
        "ETCD_CACERT": tls.ca_cert,
        "ETCD_CERT": tls.clients[cert].cert,
        "ETCD_KEY": tls.clients[cert].key,
        "ETCD_USERNAME": "gateway",
        "ETCD_PASSWORD": GATEWAY_PASSWORD,
        "CONFIG_INITIAL_WAIT_SECONDS": "3",
    }
    env.update(overrides)
    return env


def client_for(env: dict[str, str], monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    app = functions_framework.create_app(target="api_gateway", source=os.path.join(ROOT, "main.py"))
    return app.test_client()


@pytest.mark.parametrize("cert", ["function", "gateway"])
def test_gateway_reads_config_over_tls_with_auth(secure_etcd, tmp_path, cert):
    """With a CN-less certificate the first list uses the JSON gateway; with a CN one, gRPC."""
    server, tls = secure_etcd
    with FunctionServer(gateway_env(server, tls, cert=cert), workers=1, log_path=str(tmp_path / "fn.log")) as fn:
        import requests

        response = requests.get(fn.url + "/", timeout=10)
        assert response.status_code == 200
        assert response.headers["RateLimit-Limit"] == "61"
        server.etcdctl("--user=root:root-secret", "put", RATE_LIMIT, "62")
        wait_until(lambda: requests.get(fn.url + "/", timeout=10).headers["RateLimit-Limit"] == "62", 10,
                   message="watch over TLS delivers changes")
    log = (tmp_path / "fn.log").read_text()
    assert ("JSON gateway refused" in log) is (cert == "gateway"), log[-2000:]


def test_gateway_credentials_cannot_write(secure_etcd):
    server, tls = secure_etcd
    client = EtcdClient(Settings.from_env(gateway_env(server, tls)))
    try:
        revision, kvs = client.list_range(b"/config/", b"/config0", timeout=5)
        assert [kv.key for kv in kvs] == [RATE_LIMIT]
        with pytest.raises(AuthError, match="permission denied"):
            client.put(RATE_LIMIT, "1", timeout=5)
        with pytest.raises(AuthError, match="permission denied"):
            client.list_range(b"/secrets/", b"/secrets0", timeout=5)
    finally:
        client.close()


def test_never_synced_with_a_refused_password_answers_503_with_the_reason(secure_etcd, monkeypatch, caplog):
    """Not 200 with defaults: etcd is reachable and says no, so defaults would be a lie."""
    server, tls = secure_etcd
    client = client_for(gateway_env(server, tls, ETCD_PASSWORD="wrong-password"), monkeypatch)
    response = client.get("/")
    assert response.status_code == 503 and "X-Config-Revision" not in response.headers
    error = response.json["error"]
    assert "ETCD_USERNAME/ETCD_PASSWORD" in error
    assert "wrong-password" not in error and str(server.client_port) not in error
    status = client.get("/_status").json  # STATUS_DETAILS off: the kind and reason only
    assert status["state"] == "failed" and status["error_kind"] == "permanent" and status["synced"] is False
    assert "last_error" not in status and "endpoint" not in status
    assert any(r.levelno == logging.ERROR and "invalid user ID or password" in str(getattr(r, "json_fields", ""))
               for r in caplog.records)


def test_synced_process_keeps_its_snapshot_when_etcd_refuses_it_later(secure_etcd, monkeypatch):
    server, tls = secure_etcd
    client = client_for(gateway_env(server, tls, CONFIG_STALENESS_SECONDS="0.5", STATUS_DETAILS="true"),
                        monkeypatch)
    assert client.get("/").headers["RateLimit-Limit"] == "61"
    server.etcdctl("--user=root:root-secret", "user", "passwd", "gateway", "--interactive=false",
                   input="changed-password\n")
    server.restart()  # the watch reconnects, and must log in again
    status = wait_until(lambda: (s := client.get("/_status").json)["error_kind"] == "permanent" and s, 15,
                        message="refused login reported")
    assert status["synced"] is True and status["state"] == "failed"
    assert "invalid user ID or password" in status["last_error"]
    response = client.get("/")
    assert response.status_code == 200 and response.headers["RateLimit-Limit"] == "61"  # the last good snapshot
    wait_until(lambda: client.get("/_status").json["stale"] is True, 5, message="reported stale")


def test_wrong_certificate_is_reported_without_crashing(secure_etcd, monkeypatch, tmp_path):
    server, tls = secure_etcd
    other = make_tls_material(tmp_path / "other-pki", client_names=("gateway",))  # signed by another CA
    client = client_for(gateway_env(server, tls, ETCD_CERT=other.clients["gateway"].cert,
                                    ETCD_KEY=other.clients["gateway"].key, CONFIG_INITIAL_WAIT_SECONDS="0.3",
                                    STATUS_DETAILS="true"),
                        monkeypatch)
    assert client.get("/").status_code == 200
    status = wait_until(lambda: (s := client.get("/_status").json)["last_error"] and s, 5)
    assert status["synced"] is False and status["connected"] is False
    assert "Unavailable" in status["last_error"] and "certificate" in status["last_error"].lower()


def test_missing_certificate_file_is_a_settings_error(secure_etcd, monkeypatch, tmp_path):
    """TLS files are read when the runtime is made: a missing one is a bad setting, at once."""
    server, tls = secure_etcd
    client = client_for(gateway_env(server, tls, ETCD_CERT=str(tmp_path / "absent.pem")), monkeypatch)
    for path in ("/", "/_status", "/onboarding"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert "ETCD_CERT" in response.json["error"] and "absent.pem" in response.json["error"]


def test_a_role_without_membership_rights_leaves_the_gateway_serving(secure_etcd, monkeypatch, caplog):
    """This fixture's role reads /config/ only (no gateway-member role): registration is
    refused, the configuration and the requests are not affected."""
    server, tls = secure_etcd
    client = client_for(gateway_env(server, tls, STATUS_DETAILS="true"), monkeypatch)
    for _ in range(3):
        response = client.get("/", headers={"X-Api-Key": "a"})
        assert response.status_code == 200 and response.headers["RateLimit-Limit"] == "61"
    status = wait_until(lambda: (s := client.get("/_status").json["rate_limit"])["last_error"] and s, 10)
    assert "permission denied" in status["last_error"]
    assert status["registered"] is False and status["members"] == 1
    assert client.get("/_status").json["synced"] is True
    assert any("membership registration or renewal failed" in r.getMessage() for r in caplog.records)
