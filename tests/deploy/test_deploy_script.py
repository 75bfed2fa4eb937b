"""deploy.sh against a stand-in gcloud, and what .gcloudignore uploads."""

from __future__ import annotations

import shlex
import shutil
import subprocess

import pytest

from deploy_support import REPO

DEPLOY = str(REPO / "deploy.sh")
GOOD = ["--region", "us-central1", "--etcd-endpoints", "10.10.0.2:2379"]
# gcloud calls that change something; none may happen before validation passes.
MUTATING = {("functions", "deploy"), ("run", "services"), ("functions", "add-invoker-policy-binding")}


def deploy(fake_gcloud, *args, **env):
    return subprocess.run(
        ["bash", DEPLOY, *args], env=fake_gcloud.env(**env), cwd=REPO,
        capture_output=True, text=True, timeout=30,
    )


def calls_of(fake_gcloud, *prefix):
    return [c for c in fake_gcloud.calls() if [a for a in c if not a.startswith("-")][: len(prefix)] == list(prefix)]


def flags(argv) -> dict:
    """--name=value / bare --name flags of one gcloud call."""
    out = {}
    for arg in argv:
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            out[name] = value
    return out


def env_vars(deploy_flags) -> dict:
    raw = deploy_flags["--set-env-vars"]
    assert raw.startswith("^;^"), "ETCD_ENDPOINTS has commas: an alternate delimiter is needed"
    return dict(item.split("=", 1) for item in raw[3:].split(";"))


def secrets(deploy_flags) -> dict:
    return dict(item.split("=", 1) for item in deploy_flags["--set-secrets"].split(","))


def the_deploy_call(fake_gcloud):
    (call,) = calls_of(fake_gcloud, "functions", "deploy")
    return call


# --- a real run against the stand-in ------------------------------------------------------


def test_deploys_gen2_http_function_with_private_egress(fake_gcloud):
    result = deploy(fake_gcloud, *GOOD)
    assert result.returncode == 0, result.stderr
    call = the_deploy_call(fake_gcloud)
    assert call[:3] == ["functions", "deploy", "api-gateway"]
    f = flags(call)
    assert "--gen2" in f and "--trigger-http" in f
    assert f["--runtime"] == "python312"
    assert f["--entry-point"] == "api_gateway"
    assert f["--source"] == str(REPO)
    assert f["--region"] == "us-central1"
    assert f["--project"] == "fake-project"  # from `gcloud config get-value project`
    assert f["--service-account"] == "api-gateway-fn@fake-project.iam.gserviceaccount.com"
    assert f["--vpc-connector"] == "etcd-connector"
    assert f["--egress-settings"] == "private-ranges-only"
    assert f["--min-instances"] == "1"
    assert int(f["--concurrency"]) > 1 and float(f["--cpu"]) >= 1
    assert "--no-allow-unauthenticated" in f and "--allow-unauthenticated" not in f
    assert calls_of(fake_gcloud, "run") == [], "CPU throttling is left alone by default"


def test_function_gets_the_env_vars_the_code_reads(fake_gcloud):
    assert deploy(fake_gcloud, *GOOD, "--etcd-endpoints", "10.10.0.2:2379,https://10.10.0.3:2379",
                  "--staleness", "2.5").returncode == 0
    env = env_vars(flags(the_deploy_call(fake_gcloud)))
    assert env["ETCD_ENDPOINTS"] == "10.10.0.2:2379,https://10.10.0.3:2379"
    assert env["TRUSTED_PROXY_HOPS"] == "1"
    assert env["CONFIG_SERVICE"] == "api-gateway"
    assert env["ETCD_USERNAME"] == "gateway"
    assert env["LOG_LEVEL"] == "INFO"
    assert env["CONFIG_STALENESS_SECONDS"] == "2.5"
    assert "CONFIG_INITIAL_WAIT_SECONDS" not in env  # unset: the function's default applies


def test_credentials_come_from_secret_manager_only(fake_gcloud):
    # A password lying in the caller's environment must never reach gcloud's argv.
    result = deploy(fake_gcloud, *GOOD, ETCD_PASSWORD="hunter2-literal")
    assert result.returncode == 0, result.stderr
    call = the_deploy_call(fake_gcloud)
    assert not any("hunter2-literal" in arg for c in fake_gcloud.calls() for arg in c)
    f = flags(call)
    env, mounted = env_vars(f), secrets(f)
    assert "ETCD_PASSWORD" not in env
    assert mounted["ETCD_PASSWORD"] == "etcd-config-gateway-password:latest"
    # TLS files: env vars hold paths of secret files, each in a directory of its own.
    for name, secret in (("ETCD_CACERT", "etcd-config-ca-cert"),
                         ("ETCD_CERT", "etcd-config-gateway-cert"),
                         ("ETCD_KEY", "etcd-config-gateway-key")):
        assert env[name].startswith("/etc/secrets/")
        assert mounted[env[name]] == f"{secret}:latest"
    directories = [path.rsplit("/", 1)[0] for path in mounted if path.startswith("/")]
    assert len(directories) == len(set(directories)) == 3
    assert not any("BEGIN" in value for value in env.values())


def test_the_processor_url_and_token_reach_the_function_as_terraform_gives_them(fake_gcloud):
    assert deploy(fake_gcloud, *GOOD, "--processor-url", "http://10.10.0.9:8081").returncode == 0
    f = flags(the_deploy_call(fake_gcloud))
    assert env_vars(f)["PROCESSOR_URL"] == "http://10.10.0.9:8081"
    assert secrets(f)["PROCESSOR_TOKEN"] == "data-processor-token:latest"  # terraform's secret name
    assert "PROCESSOR_TOKEN" not in env_vars(f)


def test_without_a_processor_url_neither_is_set(fake_gcloud):
    assert deploy(fake_gcloud, *GOOD).returncode == 0
    f = flags(the_deploy_call(fake_gcloud))
    assert "PROCESSOR_URL" not in env_vars(f) and "PROCESSOR_TOKEN" not in secrets(f)


def test_secret_versions_can_be_pinned(fake_gcloud):
    assert deploy(fake_gcloud, *GOOD, "--password-secret", "my-pw:3").returncode == 0
    assert secrets(flags(the_deploy_call(fake_gcloud)))["ETCD_PASSWORD"] == "my-pw:3"


def test_settings_come_from_the_environment_too(fake_gcloud):
    result = deploy(fake_gcloud, REGION="europe-west1", ETCD_ENDPOINTS="10.0.0.9:2379",
                    PROJECT_ID="env-project", FUNCTION_NAME="gw-test", MIN_INSTANCES="2",
                    MAX_INSTANCES="4", EGRESS_SETTINGS="all")
    assert result.returncode == 0, result.stderr
    assert calls_of(fake_gcloud, "config") == [], "PROJECT_ID was given; no lookup needed"
    call = the_deploy_call(fake_gcloud)
    f = flags(call)
    assert call[2] == "gw-test"
    assert (f["--project"], f["--region"], f["--min-instances"], f["--max-instances"],
            f["--egress-settings"]) == ("env-project", "europe-west1", "2", "4", "all")
    assert f["--service-account"] == "gw-test-fn@env-project.iam.gserviceaccount.com"


def test_flags_beat_the_environment(fake_gcloud):
    assert deploy(fake_gcloud, *GOOD, "--region=asia-east1", REGION="europe-west1").returncode == 0
    assert flags(the_deploy_call(fake_gcloud))["--region"] == "asia-east1"


def test_cpu_always_allocated_updates_the_run_service(fake_gcloud):
    assert deploy(fake_gcloud, *GOOD, "--cpu-always-allocated").returncode == 0
    calls = fake_gcloud.calls()
    (update,) = calls_of(fake_gcloud, "run", "services", "update")
    assert update[3] == "api-gateway" and "--no-cpu-throttling" in update
    assert calls.index(update) > calls.index(the_deploy_call(fake_gcloud)), "after the deploy"


def test_unauthenticated_only_when_asked(fake_gcloud):
    assert deploy(fake_gcloud, *GOOD, "--allow-unauthenticated").returncode == 0
    f = flags(the_deploy_call(fake_gcloud))
    assert "--allow-unauthenticated" in f and "--no-allow-unauthenticated" not in f


def test_invokers_are_granted(fake_gcloud):
    member = "serviceAccount:client@p.iam.gserviceaccount.com"
    assert deploy(fake_gcloud, *GOOD, "--invoker", member).returncode == 0
    (grant,) = calls_of(fake_gcloud, "functions", "add-invoker-policy-binding")
    assert f"--member={member}" in grant


# --- dry run and help ----------------------------------------------------------------------


def test_dry_run_prints_every_command_and_runs_none(fake_gcloud):
    result = deploy(fake_gcloud, *GOOD, "--dry-run", "--cpu-always-allocated")
    assert result.returncode == 0, result.stderr
    assert fake_gcloud.calls() == [], "dry run called gcloud"
    printed = [shlex.split(line.removeprefix("DRY-RUN:"))
               for line in result.stdout.splitlines() if line.startswith("DRY-RUN:")]
    assert [p[:3] for p in printed] == [
        ["gcloud", "config", "get-value"],
        ["gcloud", "functions", "deploy"],
        ["gcloud", "run", "services"],
    ]
    f = flags(printed[1])
    assert f["--entry-point"] == "api_gateway" and "--gen2" in f
    assert env_vars(f)["ETCD_ENDPOINTS"] == "10.10.0.2:2379"
    assert secrets(f)["ETCD_PASSWORD"].endswith(":latest")


def test_help_lists_the_settings_and_runs_nothing(fake_gcloud):
    result = deploy(fake_gcloud, "--help")
    assert result.returncode == 0
    for word in ("PROJECT_ID", "REGION", "ETCD_ENDPOINTS", "--dry-run", "--min-instances",
                 "--max-instances", "--egress", "--service-account", "--function",
                 "--cpu-always-allocated", "--allow-unauthenticated"):
        assert word in result.stdout
    assert fake_gcloud.calls() == []


# --- bad settings stop the script before anything changes -----------------------------------


@pytest.mark.parametrize(
    "args, env, setting",
    [
        (["--etcd-endpoints", "10.0.0.2:2379"], {}, "REGION"),
        (["--region", "us-central1"], {}, "ETCD_ENDPOINTS"),
        (["--region", "us-central1", "--etcd-endpoints", "10.0.0.2"], {}, "ETCD_ENDPOINTS"),
        (["--region", "us-central1", "--etcd-endpoints", "10.0.0.2:99999"], {}, "ETCD_ENDPOINTS"),
        (["--region", "us-central1", "--etcd-endpoints", "http://10.0.0.2:2379"], {}, "ETCD_ENDPOINTS"),
        (["--region", "us-central1", "--etcd-endpoints", "10.0.0.2:2379,,10.0.0.3:2379"], {}, "ETCD_ENDPOINTS"),
        (["--region", "us-central1", "--etcd-endpoints", "10.0.0.2:2379;rm -rf /"], {}, "ETCD_ENDPOINTS"),
        (["--region", "nowhere", *GOOD[2:]], {}, "REGION"),
        ([*GOOD, "--min-instances", "5", "--max-instances", "3"], {}, "MIN_INSTANCES"),
        ([*GOOD, "--min-instances", "-1"], {}, "MIN_INSTANCES"),
        ([*GOOD, "--max-instances", "0"], {}, "MAX_INSTANCES"),
        ([*GOOD, "--egress", "everything"], {}, "EGRESS_SETTINGS"),
        ([*GOOD, "--cpu", "0.5"], {}, "FUNCTION_CPU"),
        ([*GOOD, "--concurrency", "1", "--cpu", "0.5", "--cpu-always-allocated"], {}, "FUNCTION_CPU"),
        ([*GOOD, "--concurrency", "0"], {}, "CONCURRENCY"),
        ([*GOOD, "--service-account", "not-an-email"], {}, "SERVICE_ACCOUNT"),
        ([*GOOD, "--password-secret", "pw:oldest"], {}, "ETCD_PASSWORD_SECRET"),
        ([*GOOD, "--log-level", "LOUD"], {}, "LOG_LEVEL"),
        ([*GOOD, "--processor-url", "10.10.0.9:8081"], {}, "PROCESSOR_URL"),
        ([*GOOD, "--processor-url", "http://10.10.0.9:8081;X=1"], {}, "PROCESSOR_URL"),
        ([*GOOD, "--processor-url", "http://p:8081", "--processor-token-secret", "t:oldest"], {},
         "PROCESSOR_TOKEN_SECRET"),
        ([*GOOD, "--invoker", "alice"], {}, "INVOKERS"),
        ([*GOOD], {"ALLOW_UNAUTHENTICATED": "maybe"}, "ALLOW_UNAUTHENTICATED"),
        ([*GOOD], {"FAKE_GCLOUD_PROJECT": ""}, "PROJECT_ID"),
        ([*GOOD, "--no-such-flag"], {}, "--no-such-flag"),
        ([*GOOD, "--region"], {}, "--region"),
    ],
)
def test_bad_setting_stops_before_any_change(fake_gcloud, args, env, setting):
    result = deploy(fake_gcloud, *args, **env)
    assert result.returncode != 0
    assert setting in result.stderr, result.stderr
    assert "error" in result.stderr
    changed = [c for c in fake_gcloud.calls() if tuple(c[:2]) in MUTATING]
    assert changed == [], f"gcloud changed something despite a bad setting: {changed}"


def test_failed_deploy_fails_the_script(fake_gcloud):
    result = deploy(fake_gcloud, *GOOD, "--project", "p-123456", FAKE_GCLOUD_EXIT="1")
    assert result.returncode != 0


# --- what gets uploaded ---------------------------------------------------------------------

UPLOADED = ["main.py", "requirements.txt", "config_watch/__init__.py", "config_watch/schema.py",
            "gateway/__init__.py", "gateway/app.py"]
LEFT_OUT = ["requirements-dev.txt", "tests/unit/test_x.py", "tests/deploy/conftest.py",
            "terraform/main.tf", "terraform/.terraform/x", "terraform.tfstate", "bench/run.py",
            "tools/etcd_server.py", "docs/DEPLOY.md", "README.md", ".venv/bin/python",
            ".local/etcd/member", "scripts/smoke.sh", "deploy.sh", "Makefile", ".ci/run",
            ".git/config", "config_watch/__pycache__/x.cpython-312.pyc", "gateway/x.pyc",
            ".env", "pytest.ini", ".gcloudignore"]


def test_gcloudignore_uploads_only_the_function(tmp_path):
    # gcloud applies .gcloudignore with gitignore rules; git itself is the reference.
    git = shutil.which("git")
    assert git, "git is needed to evaluate .gcloudignore's gitignore rules"
    (tmp_path / ".gitignore").write_text((REPO / ".gcloudignore").read_text())
    subprocess.run([git, "init", "-q", str(tmp_path)], check=True)
    for rel in UPLOADED + LEFT_OUT:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel != ".git/config":
            path.write_text("x")
    result = subprocess.run(
        [git, "-C", str(tmp_path), "check-ignore", "--no-index", "--stdin", "-z", "-n", "-v"],
        input="\0".join(UPLOADED + LEFT_OUT) + "\0", capture_output=True, text=True,
    )
    fields = result.stdout.split("\0")
    # -z -v -n: source, linenum, pattern, path per entry; pattern empty = not matched.
    verdict = {}
    for i in range(0, len(fields) - 3, 4):
        source, _, pattern, path = fields[i : i + 4]
        verdict[path] = bool(pattern) and not pattern.startswith("!")
    ignored = {p for p, v in verdict.items() if v}
    assert set(UPLOADED).isdisjoint(ignored), f"needed files left out: {set(UPLOADED) & ignored}"
    kept = set(LEFT_OUT) - ignored - {".git/config"}  # gcloud never uploads .git anyway
    assert kept == set(), f"uploaded but should not be: {kept}"
