"""The etcd VMs' backup (templates/etcd-backup.sh, run by etcd-backup.timer), run here
against a local etcd with auth on and a stand-in gcloud: what it uploads, where, as
whom, and that the upload restores."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deploy_support import TEMPLATES, heredoc_body, load_terraform, render_startup_script
from tools.certs import make_tls_material
from tools.etcd_server import EtcdCluster, EtcdServer, free_port

pytestmark = pytest.mark.slow

KEY = "/config/services/api-gateway/rate-limit"
BUCKET = "sample-project-etcd-config-backups"
UPLOADER = "etcd-config-bk@sample-project.iam.gserviceaccount.com"
PASSWORDS = {"ETCD_ROOT_PASSWORD": "r", "ETCD_GATEWAY_PASSWORD": "g", "ETCD_OPERATOR_PASSWORD": "o"}


def etcdutl(server: EtcdServer) -> str:
    return str(Path(server.etcdctl_bin).with_name("etcdutl"))


def backup_script(tmp_path) -> Path:
    """The backup script as the VM gets it: taken from the rendered startup script."""
    path = tmp_path / "etcd-backup"
    path.write_text(heredoc_body(render_startup_script(), "/usr/local/lib/etcd-backup", "ETCD_BACKUP_EOF"))
    return path


def run_backup(script: Path, fake_gcloud, server: EtcdServer, member: str, **extra) -> subprocess.CompletedProcess:
    env = fake_gcloud.env(
        ETCDCTL=server.etcdctl_bin, ETCDUTL=etcdutl(server), ETCDCTL_ENDPOINTS=server.client_url,
        BACKUP_BUCKET=BUCKET, BACKUP_PREFIX="etcd-config", MEMBER_NAME=member,
        BACKUP_SERVICE_ACCOUNT=UPLOADER, BACKUP_TMPDIR=str(script.parent), **extra)
    env = {k: v for k, v in env.items() if not k.startswith("ETCDCTL_") or k in extra or k == "ETCDCTL_ENDPOINTS"}
    if server.tls:
        env.update(ETCDCTL_CACERT=server.tls.ca, ETCDCTL_CERT=server.tls.client_cert, ETCDCTL_KEY=server.tls.client_key)
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def secured_etcd(tmp_path):
    """One member with client TLS and auth on, as the VM runs it."""
    tls = make_tls_material(tmp_path / "pki", client_names=("root", "gateway", "operator"))
    server = EtcdServer(tls=tls.etcd_tls("root"), data_dir=str(tmp_path / "etcd-data"),
                        log_path=str(tmp_path / "etcd.log"))
    server.start()
    try:
        bootstrap = tmp_path / "etcd-bootstrap"
        shutil.copy(TEMPLATES / "etcd-bootstrap.sh", bootstrap)
        env = {**os.environ, **PASSWORDS, "ETCDCTL": server.etcdctl_bin, "ETCDCTL_ENDPOINTS": server.client_url,
               "ETCDCTL_CACERT": tls.ca_cert, "ETCDCTL_CERT": tls.clients["root"].cert,
               "ETCDCTL_KEY": tls.clients["root"].key}
        result = subprocess.run(["bash", str(bootstrap)], env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        server.etcdctl("put", KEY, "77")
        yield server
    finally:
        server.close()


def test_backup_script_is_embedded_verbatim(tmp_path):
    assert backup_script(tmp_path).read_text() == (TEMPLATES / "etcd-backup.sh").read_text()


def test_leader_uploads_a_verified_snapshot_with_metadata_as_the_uploader(secured_etcd, fake_gcloud, tmp_path):
    result = run_backup(backup_script(tmp_path), fake_gcloud, secured_etcd, "etcd-config")
    assert result.returncode == 0, result.stdout + result.stderr

    (call,) = fake_gcloud.calls()
    assert call[:2] == ["storage", "cp"]
    assert f"--impersonate-service-account={UPLOADER}" in call
    assert call[-1] == f"gs://{BUCKET}/etcd-config/"
    uploaded = sorted((fake_gcloud.buckets_dir / BUCKET / "etcd-config").iterdir())
    assert [p.suffix for p in uploaded] == [".db", ".json"]
    snapshot, metadata_file = uploaded
    assert re.fullmatch(r"\d{8}T\d{6}Z-rev\d+-etcd-config\.db", snapshot.name), snapshot.name
    metadata = json.loads(metadata_file.read_text())
    assert metadata["member"] == "etcd-config"
    assert metadata["revision"] == secured_etcd.revision()
    assert metadata["snapshot"] == snapshot.name
    assert metadata["etcd_version"].startswith("3.5")
    assert metadata["sha256"] == hashlib.sha256(snapshot.read_bytes()).hexdigest()
    assert not list(tmp_path.glob("etcd-backup.*")), "the work directory was left behind"

    # The upload restores, with auth and the data.
    peer_port = free_port()
    restored = tmp_path / "restored"
    subprocess.run([etcdutl(secured_etcd), "snapshot", "restore", str(snapshot), "--data-dir", str(restored),
                    "--name", "default", "--initial-cluster", f"default=http://127.0.0.1:{peer_port}",
                    "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}"],
                   check=True, capture_output=True, timeout=60)
    with EtcdServer(data_dir=str(restored), peer_port=peer_port, tls=secured_etcd.tls) as copy:
        assert copy.etcdctl("get", KEY, "--print-value-only").strip() == "77"
        assert "Authentication Status: true" in copy.etcdctl("auth", "status")


def test_a_failed_upload_fails_the_unit(secured_etcd, fake_gcloud, tmp_path):
    result = run_backup(backup_script(tmp_path), fake_gcloud, secured_etcd, "etcd-config",
                        FAKE_GCLOUD_EXIT="1")
    assert result.returncode != 0
    assert "uploaded" not in result.stdout


def test_only_the_leader_uploads_unless_asked(fake_gcloud, tmp_path):
    script = backup_script(tmp_path)
    with EtcdCluster(3, base_dir=str(tmp_path / "cluster")) as cluster:
        cluster.members[0].etcdctl("put", KEY, "5")
        results = {m.name: run_backup(script, fake_gcloud, m, m.name) for m in cluster.members}
        assert all(r.returncode == 0 for r in results.values()), results
        uploaders = [name for name, r in results.items() if "uploaded" in r.stdout]
        assert len(uploaders) == 1, {n: r.stdout for n, r in results.items()}
        skipped = [name for name, r in results.items() if "is not the leader" in r.stdout]
        assert len(skipped) == 2
        # A backup taken by hand on a follower.
        forced = run_backup(script, fake_gcloud, next(m for m in cluster.members if m.name == skipped[0]),
                            skipped[0], BACKUP_ALWAYS="1")
        assert forced.returncode == 0 and "uploaded" in forced.stdout, forced.stderr
    assert len(fake_gcloud.calls()) == 2


def test_backup_timer_and_bucket_follow_the_variables():
    script = render_startup_script()
    timer = heredoc_body(script, "/etc/systemd/system/etcd-backup.timer", "TIMER_EOF")
    assert "OnCalendar=$BACKUP_INTERVAL" in timer and "Persistent=true" in timer
    assert 'BACKUP_INTERVAL="hourly"' in script
    assert "systemctl enable etcd etcd-backup.timer" in script
    tf = load_terraform()
    assert tf["variable"]["etcd_backup_interval"]["default"] == "hourly"
    assert tf["variable"]["etcd_backup_retention_days"]["default"] == 30
    bucket = tf["resource"]["google_storage_bucket"]["etcd_backups"]
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    assert bucket["versioning"] == [{"enabled": True}]
    ages = [rule["condition"][0] for rule in bucket["lifecycle_rule"]]
    assert {"age": "${var.etcd_backup_retention_days}"} in ages
    assert any(c.get("days_since_noncurrent_time") == "${var.etcd_backup_retention_days}" for c in ages)


def test_the_uploader_may_only_create_objects_in_the_backup_bucket():
    tf = load_terraform()
    grants = [(rtype, g) for rtype, named in tf["resource"].items() if rtype.endswith("_iam_member")
              for g in named.values() if "etcd_backup.email" in str(g.get("member", ""))]
    assert len(grants) == 1, grants
    rtype, grant = grants[0]
    assert rtype == "google_storage_bucket_iam_member"
    assert grant["bucket"] == "${google_storage_bucket.etcd_backups.name}"
    assert grant["role"] == "roles/storage.objectCreator"
    # The VMs may mint tokens for it and nothing more.
    act_as = tf["resource"]["google_service_account_iam_member"]["etcd_vm_uploads_backups"]
    assert act_as["role"] == "roles/iam.serviceAccountTokenCreator"
    assert act_as["service_account_id"] == "${google_service_account.etcd_backup.name}"
