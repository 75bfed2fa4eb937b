"""The processor VM (terraform/processor.tf): parsed with python-hcl2, its startup script
rendered as Terraform would, ShellChecked, and its install steps run here; then the
installed release serves from a local etcd with the read-only user the bootstrap makes."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
import requests

from deploy_support import BOOTSTRAP_PASSWORDS, REPO, TEMPLATES, heredoc_body, load_terraform, render_template, \
    resolve_template_values, template_names
from tools.certs import make_tls_material
from tools.etcd_server import EtcdServer, free_port
from tools.processor_server import ProcessorServer

TF = load_terraform()
RESOURCES = TF["resource"]
VM = RESOURCES["google_compute_instance"]["processor"]
TEMPLATE = TEMPLATES / "processor-startup.sh.tftpl"
TOKEN = "processor-token-for-tests-0123456789"
PASSWORDS = {**BOOTSTRAP_PASSWORDS, "ETCD_PROCESSOR_PASSWORD": "processor-pw-for-tests"}
THREADS = "/config/services/data-processor/threads"
GATEWAY_KEY = "/config/services/api-gateway/rate-limit"


def template_values(**overrides) -> dict:
    # Apply-time values (resource attributes) get samples, as Terraform would fill them.
    return resolve_template_values("processor_startup_vars", {
        "token_secret": "data-processor-token",
        "source_url": "gs://sample-bucket/function-source-0123abcd.zip",
        "etcd_endpoints": "https://10.10.0.2:2379", **overrides})


def rendered_script(**overrides) -> str:
    return render_template(TEMPLATE.read_text(), template_values(**overrides))


# --- Terraform ------------------------------------------------------------------------------


def test_template_values_match_the_names_the_template_uses():
    used = template_names(TEMPLATE.read_text())
    given = set(TF["locals"]["processor_startup_vars"])
    assert used == given, f"used but not given: {used - given}; given but unused: {given - used}"


def test_vm_is_private_and_shielded_and_runs_the_startup_template():
    for nic in VM["network_interface"]:
        assert "access_config" not in nic and "ipv6_access_config" not in nic
    assert "access_config" not in json.dumps(VM)
    (shielded,) = VM["shielded_instance_config"]
    assert all(shielded.values())
    assert "processor-startup.sh.tftpl" in VM["metadata"]["startup-script"]
    assert VM["metadata"]["enable-oslogin"] == "TRUE"
    (account,) = VM["service_account"]
    assert account["email"] == "${google_service_account.processor.email}"


def test_runs_from_the_function_source_archive():
    source = TF["locals"]["processor_startup_vars"]["source_url"]
    assert "google_storage_bucket.source.name" in source and "google_storage_bucket_object.source.name" in source
    assert '"processor/**"' in TF["locals"]["source_files"]
    gcloudignore = (REPO / ".gcloudignore").read_text().splitlines()
    assert "!/processor/" in gcloudignore


def test_port_admits_only_the_function_egress_range():
    port = str(TF["variable"]["processor_port"]["default"])
    assert port == "8081"
    rules = [r for r in RESOURCES["google_compute_firewall"].values()
             if any("processor_port" in p for a in r["allow"] for p in a.get("ports", []))]
    assert len(rules) == 1
    (rule,) = rules
    assert rule["source_ranges"] == ["${var.connector_cidr}"]
    assert rule["target_service_accounts"] == ["${google_service_account.processor.email}"]
    assert "source_service_accounts" not in rule
    etcd_rule = RESOURCES["google_compute_firewall"]["etcd_client"]
    assert etcd_rule["source_service_accounts"] == ["${google_service_account.processor.email}"]


def test_reads_only_its_own_secrets_and_the_function_gets_the_token():
    assert set(TF["locals"]["processor_secrets"]) == {"ca-cert", "processor-cert", "processor-key",
                                                      "processor-password"}
    binding = RESOURCES["google_secret_manager_secret_iam_member"]["processor"]
    assert binding["member"] == "serviceAccount:${google_service_account.processor.email}"
    token_readers = RESOURCES["google_secret_manager_secret_iam_member"]["processor_token"]["for_each"]
    assert set(token_readers) == {"processor", "function"}
    assert "processor-password" in TF["locals"]["etcd_vm_secrets"]  # the etcd VM creates the user
    (function,) = RESOURCES["google_cloudfunctions2_function"].values()
    (service,) = function["service_config"]
    keys = {s["key"]: s["secret"] for s in service["secret_environment_variables"]}
    assert keys["PROCESSOR_TOKEN"] == "${google_secret_manager_secret.processor_token.secret_id}"
    assert TF["locals"]["function_env"]["PROCESSOR_URL"] == "${local.processor_url}"


def test_output_names_the_private_url():
    assert "processor_url" in TF["output"]
    assert "google_compute_address.processor.address" in TF["locals"]["processor_url"]
    assert TF["locals"]["processor_url"].startswith("http://")


def test_etcd_startup_passes_the_processor_password_to_the_bootstrap():
    script = (TEMPLATES / "etcd-startup.sh.tftpl").read_text()
    assert 'ETCD_PROCESSOR_PASSWORD="$(secret processor-password)"' in script
    bootstrap = (TEMPLATES / "etcd-bootstrap.sh").read_text()
    assert "${ETCD_PROCESSOR_USER:-processor}" in bootstrap
    assert TF["locals"]["processor_etcd_user"] == "processor"


def test_rendered_startup_script_passes_shellcheck(shellcheck, tmp_path):
    path = tmp_path / "processor-startup.sh"
    path.write_text(rendered_script())
    result = subprocess.run([shellcheck, "--norc", "--severity=style", str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_drains_before_systemd_kills():
    unit = heredoc_body(rendered_script(), '"$UNIT_DIR/processor.service"', "UNIT_EOF")
    assert "ExecStart=$APP_ROOT/current/venv/bin/python -m processor" in unit
    assert "KillMode=mixed" in unit and "KillSignal=SIGTERM" in unit
    assert "TimeoutStopSec=$((DRAIN_SECONDS + 15))" in unit
    assert "User=$SERVICE_USER" in unit and "NoNewPrivileges=true" in unit


# --- the startup steps, run here ----------------------------------------------------------


def source_archive(path: Path) -> Path:
    """The function's archive: the file set of terraform/function.tf's local.source_files."""
    files = ["main.py", "requirements.txt"]
    for package in ("config_watch", "gateway", "processor"):
        files += [str(p.relative_to(REPO)) for p in sorted((REPO / package).rglob("*"))
                  if p.is_file() and "__pycache__" not in p.parts]
    with zipfile.ZipFile(path, "w") as z:
        for f in files:
            z.write(REPO / f, f)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    named = path.with_name(f"function-source-{digest}.zip")
    path.rename(named)
    return named


def fake_tools(bin_dir: Path, gcs: Path, secrets: Path, calls: Path) -> None:
    """`gcloud storage cp` and `gcloud secrets versions access` from local directories,
    and a `python3` whose `-m venv` links the test's interpreter in (the real
    dependencies are already installed there) and whose venv `pip` only records its argv."""
    bin_dir.mkdir(parents=True)
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import json, shutil, sys
        from pathlib import Path
        argv = sys.argv[1:]
        open({str(calls)!r}, "a").write(json.dumps(["gcloud", *argv]) + "\\n")
        words = [a for a in argv if not a.startswith("-")]
        if words[:2] == ["storage", "cp"]:
            shutil.copy(Path({str(gcs)!r}) / words[2].rsplit("/", 1)[1], words[3])
        elif words[:3] == ["secrets", "versions", "access"]:
            name = next(a.split("=", 1)[1] for a in argv if a.startswith("--secret="))
            path = Path({str(secrets)!r}) / name
            if not path.exists():
                sys.exit(f"NOT_FOUND: secret {{name}}")
            sys.stdout.write(path.read_text())
        else:
            sys.exit(f"unexpected gcloud call: {{argv}}")
        """))
    python = bin_dir / "python3"
    python.write_text(f"#!{sys.executable}\n" + textwrap.dedent(f"""
        import json, os, sys
        from pathlib import Path
        if sys.argv[1:3] == ["-m", "venv"]:
            if sys.argv[3:] == ["--help"]:
                sys.exit(0)
            venv = Path(sys.argv[3]) / "bin"
            venv.mkdir(parents=True)
            (venv / "python").symlink_to({sys.executable!r})
            pip = venv / "pip"
            pip.write_text("#!/bin/sh\\necho \\"[\\\\\\"pip\\\\\\", \\\\\\"$*\\\\\\"]\\" >>{calls}\\n")
            pip.chmod(0o755)
            sys.exit(0)
        os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])
        """))
    for tool in (gcloud, python):
        tool.chmod(0o755)


@pytest.fixture(scope="module")
def vm(tmp_path_factory):
    """The etcd VM's bootstrap run against a local TLS etcd, then the processor VM's
    startup steps (all but useradd/systemctl) run in a scratch root."""
    work = tmp_path_factory.mktemp("processor-vm")
    tls = make_tls_material(work / "pki", client_names=("root", "operator"), no_cn_clients=("processor",))
    flags = ["--client-cert-auth=true", f"--trusted-ca-file={tls.ca_cert}"]
    etcd = EtcdServer(tls=tls.etcd_tls("root"), extra_args=flags, log_path=str(work / "etcd.log"))
    etcd.start()
    try:
        env = {**os.environ, "ETCDCTL": etcd.etcdctl_bin, "ETCDCTL_ENDPOINTS": etcd.client_url,
               "ETCDCTL_CACERT": tls.ca_cert, "ETCDCTL_CERT": tls.clients["root"].cert,
               "ETCDCTL_KEY": tls.clients["root"].key, **PASSWORDS}
        for _ in range(2):  # idempotent
            boot = subprocess.run(["bash", str(TEMPLATES / "etcd-bootstrap.sh")], env=env,
                                  capture_output=True, text=True, timeout=60)
            assert boot.returncode == 0, boot.stdout + boot.stderr

        gcs, secrets, root = work / "gcs", work / "secrets", work / "root"
        for d in (gcs, secrets, root):
            d.mkdir()
        archive = source_archive(gcs / "source.zip")
        prefix = template_values()["secret_prefix"]
        for name, path in (("ca-cert", tls.ca_cert), ("processor-cert", tls.clients["processor"].cert),
                           ("processor-key", tls.clients["processor"].key)):
            shutil.copy(path, secrets / f"{prefix}-{name}")
        (secrets / f"{prefix}-processor-password").write_text(PASSWORDS["ETCD_PROCESSOR_PASSWORD"])
        (secrets / "data-processor-token").write_text(TOKEN)
        calls = work / "calls.jsonl"
        fake_tools(work / "bin", gcs, secrets, calls)
        port = free_port()
        script = rendered_script(source_url=f"gs://sample-bucket/{archive.name}", etcd_endpoints=etcd.client_url,
                                 port=port)
        steps = work / "steps.sh"
        steps.write_text(script.replace('\nmain "$@"\n', "\ninstall_packages\ninstall_release\ninstall_release\n"
                                                          "write_config\n"))
        me = pwd.getpwuid(os.getuid()).pw_name
        run_env = {**os.environ, "PATH": f"{work / 'bin'}:{os.environ['PATH']}", "APP_ROOT": str(root / "opt"),
                   "CONF_DIR": str(root / "etc"), "UNIT_DIR": str(root), "SERVICE_USER": me,
                   "CONF_OWNER": me, "PYTHON": "python3"}
        run = subprocess.run(["bash", str(steps)], env=run_env, cwd=work, capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        yield {"etcd": etcd, "tls": tls, "root": root, "port": port, "run": run, "archive": archive,
               "calls": [json.loads(line) for line in calls.read_text().splitlines()],
               "group": grp.getgrgid(os.getgid()).gr_name}
    finally:
        etcd.close()


def test_install_is_idempotent_and_named_by_the_archive(vm):
    release = vm["archive"].name.removesuffix(".zip")
    current = vm["root"] / "opt" / "current"
    assert current.is_symlink() and Path(os.readlink(current)).name == release
    assert (current / "app" / "processor" / "__main__.py").exists()
    assert f"installed release {release}" in vm["run"].stdout
    assert f"release {release} already installed" in vm["run"].stdout
    copies = [c for c in vm["calls"] if c[:3] == ["gcloud", "storage", "cp"]]
    assert len(copies) == 1
    pips = [c for c in vm["calls"] if c[0] == "pip"]
    assert pips == [["pip", f"install --disable-pip-version-check -q -r {current.resolve()}/app/requirements.txt"]]


def test_secrets_and_environment_file_are_private(vm):
    etc = vm["root"] / "etc"
    assert oct((etc / "processor.env").stat().st_mode & 0o777) == "0o600"
    for name in ("ca.pem", "client.pem", "client-key.pem"):
        assert oct((etc / "pki" / name).stat().st_mode & 0o777) == "0o640"
    env = dict(line.split("=", 1) for line in (etc / "processor.env").read_text().splitlines())
    assert env["PROCESSOR_TOKEN"] == TOKEN and env["ETCD_USERNAME"] == "processor"
    assert env["CONFIG_SERVICE"] == "data-processor" and env["PROCESSOR_HOST"] == "0.0.0.0"


def test_systemd_accepts_the_unit(vm):
    unit = vm["root"] / "processor.service"
    text = unit.read_text()
    assert f"ExecStart={vm['root']}/opt/current/venv/bin/python -m processor" in text
    assert "TimeoutStopSec=45" in text
    verify = shutil.which("systemd-analyze")
    assert verify, "systemd-analyze is needed to check the unit"
    result = subprocess.run([verify, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if str(unit) in line and "Failed to resolve" not in line and "user" not in line.lower()]
    assert problems == [], result.stdout + result.stderr


def test_processor_user_reads_only_its_keys(vm):
    etcd, tls = vm["etcd"], vm["tls"]

    def ctl(*args, client="processor", user="processor", password=PASSWORDS["ETCD_PROCESSOR_PASSWORD"]):
        cmd = [etcd.etcdctl_bin, f"--endpoints={etcd.client_url}", f"--cacert={tls.ca_cert}",
               f"--cert={tls.clients[client].cert}", f"--key={tls.clients[client].key}", "--dial-timeout=2s"]
        if user:
            cmd += [f"--user={user}", f"--password={password}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCDCTL")}
        return subprocess.run(cmd + list(args), env=env, capture_output=True, text=True, timeout=30)

    assert ctl("put", THREADS, "3", client="operator", user=None).returncode == 0
    assert ctl("put", GATEWAY_KEY, "55", client="operator", user=None).returncode == 0
    assert ctl("get", THREADS).stdout.split() == [THREADS, "3"]
    assert ctl("get", "/config/global/", "--prefix").returncode == 0
    # The watcher's one range, /config/global/ .. end of data-processor/, exactly.
    assert ctl("get", "/config/global/", "/config/services/data-processor0").returncode == 0
    for denied in (("put", THREADS, "4"), ("del", THREADS), ("put", "/config/global/maintenance-mode", "true"),
                   ("get", "/config/", "--prefix"), ("get", "/config/services/zeta/x"),
                   ("get", "/config/global/", "/config/services/data-processor1"), ("get", "/audit/x")):
        result = ctl(*denied)
        assert result.returncode != 0 and "permission denied" in result.stderr, denied


def test_installed_release_serves_from_etcd_with_its_user(vm, tmp_path):
    env = dict(line.split("=", 1) for line in (vm["root"] / "etc" / "processor.env").read_text().splitlines())
    env["PROCESSOR_HOST"] = "127.0.0.1"  # the VM listens on every interface; a test need not
    # As systemd runs it: the installed release's code, from its own directory.
    server = ProcessorServer(env, port=vm["port"], log_path=str(tmp_path / "processor.log"),
                             cwd=str(vm["root"] / "opt" / "current" / "app"))
    try:
        server.start(timeout=30)
        status = server.status()
        assert status["synced"] and status["error_kind"] is None
        assert status["pool"]["threads"] == 3
        url = server.url + "/v1/jobs"
        assert requests.post(url, data=b"x", timeout=10).status_code == 401
        job = requests.post(url, data=b"x", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
        assert job.status_code == 200 and job.json()["threads"] == 3
        assert re.fullmatch(r"\d+", job.headers["X-Config-Revision"])
    finally:
        server.stop()
