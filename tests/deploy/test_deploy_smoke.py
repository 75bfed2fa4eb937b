"""scripts/smoke.sh against a local HTTP server that plays the deployed function,
healthy or broken in one specific way, and a stand-in gcloud for tokens and IAP."""

from __future__ import annotations

import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy_support import REPO

SMOKE = str(REPO / "scripts" / "smoke.sh")
FLAG_KEY = "/config/services/api-gateway/features/new-user-onboarding"


class FakeFunction:
    """The gateway's HTTP surface. `mode` breaks one thing; `flag()` decides
    /onboarding (by default from the stand-in gcloud's etcd store)."""

    def __init__(self):
        self.mode = "healthy"
        self.required_token: str | None = None
        self.flag = lambda: False
        self.revision = 42
        self.requests: list[tuple[str, str | None]] = []

    def respond(self, handler: BaseHTTPRequestHandler):
        self.requests.append((handler.path, handler.headers.get("Authorization")))
        if self.required_token and handler.headers.get("Authorization") != f"Bearer {self.required_token}":
            return 401, {}, b"unauthorized"
        headers = {"X-Config-Revision": str(self.revision), "RateLimit-Limit": "100",
                   "RateLimit-Remaining": "99", "RateLimit-Reset": "60"}
        if self.mode == "missing-ratelimit-remaining":
            del headers["RateLimit-Remaining"]
        if handler.path == "/_status":
            if self.mode == "status-500":
                return 500, {}, b"internal error"
            status = {"revision": self.revision, "synced": self.mode != "not-synced",
                      "connected": True, "staleness_seconds": 0.4}
            if self.mode == "no-synced-field":
                del status["synced"]
            return 200, {"Content-Type": "application/json"}, json.dumps(status, indent=2).encode()
        if handler.path == "/onboarding":
            if self.mode == "maintenance":
                return 503, {**headers, "Retry-After": "60"}, b"maintenance"
            return (200 if self.flag() else 404), headers, b"{}"
        return 404, headers, b"{}"


@pytest.fixture
def function():
    fake = FakeFunction()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            code, headers, body = fake.respond(self)
            self.send_response(code)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        fake.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def smoke(fake_gcloud, *args, **env):
    return subprocess.run(["bash", SMOKE, *args], env=fake_gcloud.env(**env), cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def test_healthy_function_passes(function, fake_gcloud):
    result = smoke(fake_gcloud, function.url)
    assert result.returncode == 0, result.stderr
    assert "PASS" in result.stdout
    assert "revision 42" in result.stdout
    assert [path for path, _ in function.requests] == ["/_status", "/onboarding"]
    assert fake_gcloud.calls() == [], "no token for a local http URL"


def test_url_can_come_from_the_environment(function, fake_gcloud):
    result = smoke(fake_gcloud, FUNCTION_URL=function.url + "/")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "mode, message",
    [
        ("status-500", "GET /_status returned 500"),
        ("not-synced", "synced=false"),
        ("no-synced-field", "synced=<missing>"),
        ("missing-ratelimit-remaining", "no RateLimit-Remaining header"),
        ("maintenance", "GET /onboarding returned 503"),
    ],
)
def test_broken_function_fails_with_a_clear_message(function, fake_gcloud, mode, message):
    function.mode = mode
    result = smoke(fake_gcloud, function.url)
    assert result.returncode != 0
    assert "FAIL" in result.stderr and message in result.stderr, result.stderr
    assert "PASS" not in result.stdout


def test_unreachable_url_fails(fake_gcloud, function):
    url = function.url.rsplit(":", 1)[0] + ":1"  # nothing listens on port 1
    result = smoke(fake_gcloud, url, SMOKE_TIMEOUT="3")
    assert result.returncode != 0 and "FAIL: GET /_status" in result.stderr


def test_missing_url_is_a_usage_error(fake_gcloud):
    result = smoke(fake_gcloud)
    assert result.returncode != 0 and "no URL" in result.stderr


def test_private_function_gets_an_identity_token_from_gcloud(function, fake_gcloud):
    function.required_token = "fake-id-token"
    denied = smoke(fake_gcloud, function.url, SMOKE_AUTH="none")
    assert denied.returncode != 0 and "401" in denied.stderr and "SMOKE_AUTH=token" in denied.stderr
    result = smoke(fake_gcloud, function.url, SMOKE_AUTH="token")
    assert result.returncode == 0, result.stderr
    assert ["auth", "print-identity-token"] in fake_gcloud.calls()
    assert function.requests[-1] == ("/onboarding", "Bearer fake-id-token")


def test_flag_flip_is_timed_and_restored(function, fake_gcloud):
    fake_gcloud.set_etcd_value(FLAG_KEY, "false")
    function.flag = lambda: fake_gcloud.etcd_value(FLAG_KEY) == "true"
    result = smoke(fake_gcloud, "--flip", function.url, ETCD_VM="etcd-config",
                   ETCD_ZONE="us-central1-b", PROJECT_ID="p-123456")
    assert result.returncode == 0, result.stderr
    assert f"set {FLAG_KEY}=true; /onboarding answered 200 after" in result.stdout
    ssh_calls = [c for c in fake_gcloud.calls() if c[:2] == ["compute", "ssh"]]
    assert ssh_calls and all("--tunnel-through-iap" in c for c in ssh_calls)
    assert all(c[2] == "etcd-config" and "--zone=us-central1-b" in c for c in ssh_calls)
    assert fake_gcloud.etcd_value(FLAG_KEY) == "false", "the original value was not restored"


def test_flag_flip_that_never_shows_fails(function, fake_gcloud):
    fake_gcloud.set_etcd_value(FLAG_KEY, "false")
    function.flag = lambda: False  # the function never sees the change
    result = smoke(fake_gcloud, "--flip", function.url, ETCD_VM="etcd-config",
                   ETCD_ZONE="us-central1-b", PROJECT_ID="p-123456", SMOKE_FLIP_TIMEOUT="1")
    assert result.returncode != 0
    assert "still answered 404 after 1s" in result.stderr
    assert fake_gcloud.etcd_value(FLAG_KEY) == "false", "restored even on failure"


def test_flip_needs_the_vm_coordinates(function, fake_gcloud):
    result = smoke(fake_gcloud, "--flip", function.url)
    assert result.returncode != 0 and "ETCD_VM" in result.stderr
