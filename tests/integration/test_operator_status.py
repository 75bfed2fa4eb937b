"""`python -m config_watch status URL`, run as the operator runs it: identity tokens
and clear errors, over real HTTP.

One local HTTP server plays a private function's `/_status` (it wants a bearer token)
and, for google-auth, the metadata server that mints identity tokens on Google Cloud
(google-auth's own GCE_METADATA_HOST/GCE_METADATA_IP settings point it there).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]



def _jwt(claims: dict) -> str:
    """A JWT-shaped token (google-auth reads its expiry, unverified); never signed here."""
    part = lambda obj: base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'RS256', 'typ': 'JWT'})}.{part(claims)}.c2lnbmF0dXJl"


METADATA_TOKEN = _jwt({"iss": "https://accounts.google.com", "exp": int(time.time()) + 3600})
GCLOUD_TOKEN = "token-from-gcloud"


class FakeCloud(ThreadingHTTPServer):
    """Answers /_status to the accepted tokens; `metadata` says whether it acts as a
    metadata server (else it answers 404 there, as a machine off Google Cloud does)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.accepted = {METADATA_TOKEN}
        self.metadata = True
        self.status_code = 200
        self.audiences: list[str] = []
        self.tokens: list[str | None] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class Handler(BaseHTTPRequestHandler):
    server: FakeCloud

    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes, headers: dict | None = None) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        if path.startswith("/computeMetadata/"):
            if not self.server.metadata or self.headers.get("Metadata-Flavor") != "Google":
                return self._send(404, b"not found")
            if path.endswith("/identity"):
                self.server.audiences.append(urllib.parse.parse_qs(query)["audience"][0])
                return self._send(200, METADATA_TOKEN.encode(),
                                  {"Metadata-Flavor": "Google", "Content-Type": "text/plain"})
            if path.endswith("/service-accounts/default/"):  # the account's details
                info = {"email": "operator@project.iam.gserviceaccount.com", "aliases": ["default"], "scopes": []}
                return self._send(200, json.dumps(info).encode(),
                                  {"Metadata-Flavor": "Google", "Content-Type": "application/json"})
            return self._send(404, b"not found")
        if path == "/":  # google-auth pings the metadata root
            if self.server.metadata:
                return self._send(200, b"", {"Metadata-Flavor": "Google"})
            return self._send(404, b"")
        auth = self.headers.get("Authorization")
        self.server.tokens.append(auth)
        if path != "/_status":
            return self._send(404, b"no such path")
        if auth is None:
            return self._send(401, b"Unauthorized")
        if auth.removeprefix("Bearer ") not in self.server.accepted:
            return self._send(403, b"Forbidden")
        if self.server.status_code != 200:
            return self._send(self.server.status_code, b'{"error": "broken"}\n')
        return self._send(200, json.dumps({"revision": 7, "synced": True}).encode())


@pytest.fixture
def cloud(tmp_path, monkeypatch):
    server = FakeCloud()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host = server.url.removeprefix("http://")
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG"):
        os.environ.pop(name, None)
    os.environ.update(GCE_METADATA_HOST=host, GCE_METADATA_IP=host, NO_PROXY="*")
    # A stand-in gcloud on PATH: prints its token, as `gcloud auth print-identity-token` does.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(f'#!/bin/sh\n[ "$*" = "auth print-identity-token" ] && echo {GCLOUD_TOKEN}\n')
    gcloud.chmod(0o755)
    os.environ["PATH"] = f"{bin_dir}:{os.environ['PATH']}"
    monkeypatch.chdir(tmp_path)
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def run(*args: str) -> tuple[int, str, str]:
    """The tool as a subprocess: google-auth reads its metadata settings at import."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "config_watch", *args], env=env, capture_output=True,
                         text=True, timeout=60)
    return out.returncode, out.stdout, out.stderr


def one_line(err: str, *fragments: str) -> None:
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_status_sends_an_identity_token_from_google_auth(cloud):
    status, out, err = run("status", cloud.url + "/", "--id-token")
    assert status == 0, err
    assert json.loads(out) == {"revision": 7, "synced": True}
    assert cloud.audiences == [cloud.url]  # the function's URL is the token's audience
    assert cloud.tokens[-1] == f"Bearer {METADATA_TOKEN}"


def test_status_falls_back_to_gcloud_and_says_when_the_token_is_refused(cloud):
    cloud.metadata = False  # not on Google Cloud, no service account key: google-auth has nothing
    status, _, err = run("status", cloud.url, "--id-token")
    assert cloud.tokens[-1] == f"Bearer {GCLOUD_TOKEN}"
    assert status == 1
    one_line(err, "the function refused the identity token (HTTP 403)", "roles/run.invoker")
    cloud.accepted.add(GCLOUD_TOKEN)
    assert run("status", cloud.url, "--id-token")[0] == 0


def test_status_without_a_token_says_to_send_one(cloud):
    status, _, err = run("status", cloud.url)
    assert status == 1 and cloud.tokens[-1] is None
    one_line(err, "refused the request (HTTP 401)", "add --id-token")


def test_status_without_any_credentials_says_how_to_log_in(cloud):
    cloud.metadata = False
    os.environ["PATH"] = "/nonexistent"
    status, _, err = run("status", cloud.url, "--id-token")
    assert status == 1 and not cloud.tokens  # nothing sent
    one_line(err, "cannot get an identity token", "gcloud is not installed", "gcloud auth login")


def test_status_reports_http_errors_and_bad_urls_in_one_line(cloud):
    cloud.status_code = 500
    status, _, err = run("status", cloud.url, "--id-token")
    assert status == 1
    one_line(err, f"{cloud.url}/_status answered HTTP 500", "broken")
    status, _, err = run("status", "https://no-such-function.invalid")
    assert status == 1
    one_line(err, "cannot resolve host 'no-such-function.invalid'", "check the URL")
    status, _, err = run("status", "no-such-function.run.app")
    assert status == 2
    one_line(err, "is not an http(s) URL")
