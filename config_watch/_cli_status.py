"""`python -m config_watch status URL`: one instance's `/_status`, with an identity
token when asked, and every failure said in one line."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import urllib.error
import urllib.parse
import urllib.request

from ._cli_etcd import DETAIL_CHARS, CliError, refused, short

def identity_token(audience: str) -> str:
    """An identity token for `audience`: google-auth's default credentials (a service
    account key, or the metadata server on Google Cloud), else `gcloud`'s login."""
    try:
        import google.auth.transport.requests
        import google.oauth2.id_token

        return google.oauth2.id_token.fetch_id_token(google.auth.transport.requests.Request(), audience)
    except Exception as exc:  # google-auth raises several kinds; each means "try gcloud"
        first = short(exc)
    try:
        out = subprocess.run(["gcloud", "auth", "print-identity-token"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        second = "gcloud is not installed"
    except subprocess.TimeoutExpired:
        second = "gcloud did not answer within 60 s"
    else:
        token = out.stdout.strip()
        if out.returncode == 0 and token:
            return token
        lines = [line for line in out.stderr.splitlines() if line.strip()] or ["no token printed"]
        second = short(Exception(next((line for line in lines if line.startswith("ERROR:")), lines[0])))
    raise CliError(f"cannot get an identity token: google-auth: {first}; gcloud: {second}; "
                   "log in with `gcloud auth login` or set GOOGLE_APPLICATION_CREDENTIALS to a service account key")


def cmd_status(args, _etcd) -> int:
    base = args.url.rstrip("/")
    parts = urllib.parse.urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refused(f"{args.url!r} is not an http(s) URL: give the function's URL, e.g. https://<name>-<hash>.run.app")
    url = base + "/_status"
    headers = {"Accept": "application/json"}
    if args.id_token:
        headers["Authorization"] = "Bearer " + identity_token(base)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=args.timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        raise _http_refusal(exc, url, args.id_token) from None
    except urllib.error.URLError as exc:
        raise _unreachable(exc.reason, parts, url, args.timeout) from None
    except (TimeoutError, socket.timeout) as exc:
        raise _unreachable(exc, parts, url, args.timeout) from None
    try:
        print(json.dumps(json.loads(body), indent=2))
    except ValueError:
        raise CliError(f"{url} did not answer JSON: is {base} the gateway's URL?") from None
    return 0


def _http_refusal(exc: urllib.error.HTTPError, url: str, sent_token: bool) -> CliError:
    if exc.code in (401, 403):
        if sent_token:
            return CliError(f"the function refused the identity token (HTTP {exc.code}) at {url}: the account "
                            "behind it needs roles/run.invoker on the function")
        return CliError(f"the function refused the request (HTTP {exc.code}) at {url}: it requires authentication; "
                        "add --id-token")
    try:
        body = " ".join(exc.read().decode("utf-8", "replace").split())[:DETAIL_CHARS]
    except OSError:
        body = ""
    return CliError(f"{url} answered HTTP {exc.code} {exc.reason}" + (f": {body}" if body else ""))


def _unreachable(reason, parts: urllib.parse.SplitResult, url: str, timeout: float) -> CliError:
    if isinstance(reason, socket.gaierror):
        return CliError(f"cannot resolve host {parts.hostname!r} in {url}: check the URL")
    if isinstance(reason, ConnectionRefusedError):
        return CliError(f"nothing is listening at {parts.netloc} ({url}): is the function running at that URL?")
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return CliError(f"no answer from {url} within {timeout:g} s: check the URL and the network path")
    if isinstance(reason, ssl.SSLError):
        return CliError(f"TLS with {parts.netloc} failed ({short(reason)}): check the URL's scheme and host")
    return CliError(f"cannot reach {url}: {short(reason) if isinstance(reason, Exception) else reason}")
