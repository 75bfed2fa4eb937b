"""Reads through etcd's JSON gateway (`POST /v3/kv/range`) with the standard library.

The first list after a cold start goes this way so that a request never waits for
gRPC to import (about 150 ms of CPU); the watch, which needs a bidirectional stream,
then starts on gRPC from the listed revision + 1, so no change falls in between.
The staleness check uses it too: each call is a new connection, which is what a
check after a silent drop needs.
"""

from __future__ import annotations

import base64
import http.client
import json

from ._errors import AuthError, EtcdError, GatewayRefused, Unavailable, error_for_code, refused_user
from ._model import KeyValue
from ._settings import EndpointCursor, Settings
from ._tls import TlsMaterial

def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


class JsonGatewayClient:
    """Unary reads against the endpoint `cursor` points at."""

    def __init__(self, settings: Settings, cursor: EndpointCursor | None = None,
                 tls: TlsMaterial | None = None) -> None:
        self._settings = settings
        self._cursor = cursor or EndpointCursor(settings.endpoints)
        self._token: str | None = None
        self._ssl = (tls or TlsMaterial.load(settings)).context if settings.secure else None

    def version(self, timeout: float) -> str:
        """The etcd release of the member (`GET /version`, open to any client)."""
        payload = self._request("GET", "/version", None, timeout)
        version = payload.get("etcdserver")
        if not isinstance(version, str):
            raise EtcdError(f"/version answered without a server version: {str(payload)[:200]}")
        return version

    def _post(self, path: str, body: dict, timeout: float) -> dict:
        return self._request("POST", path, body, timeout)

    def _request(self, method: str, path: str, body: dict | None, timeout: float) -> dict:
        endpoint = self._cursor.current
        if self._ssl is not None:
            conn = http.client.HTTPSConnection(endpoint.host, endpoint.port, timeout=timeout, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(endpoint.host, endpoint.port, timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if self._token and path != "/v3/auth/authenticate":
            headers["Authorization"] = self._token
        try:
            conn.request(method, path, None if body is None else json.dumps(body), headers)
            response = conn.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:  # refused, reset, timed out, TLS refused
            raise Unavailable(f"{endpoint}: {exc}") from None
        finally:
            conn.close()
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            text = data[:200].decode("utf-8", "replace").strip()
            # A CN certificate under auth (400), or the gateway turned off (404): etcd
            # itself is fine, only this transport is not, so lists move to gRPC.
            if (response.status == 400 and "CommonName" in text) or response.status == 404:
                raise GatewayRefused(f"HTTP {response.status}: {text}") from None
            raise Unavailable(f"{endpoint}: answer is not JSON (HTTP {response.status}): {text}") from None
        if response.status != 200:
            raise self._error(response.status, payload)
        return payload

    @staticmethod
    def _error(status: int, payload: dict) -> EtcdError:
        code = payload.get("code")
        message = str(payload.get("message") or payload.get("error") or f"HTTP {status}")
        if isinstance(code, int):  # etcd's own gRPC status, passed through by the gateway
            return error_for_code(code, message, f"HTTP {status}")
        if status in (401, 403):
            return AuthError(message)
        if status >= 500 or status == 429:
            return Unavailable(message)
        return EtcdError(f"HTTP {status}: {message}")

    def _authenticate(self, timeout: float) -> None:
        s = self._settings
        try:
            payload = self._post("/v3/auth/authenticate", {"name": s.username, "password": s.password}, timeout)
        except AuthError as exc:
            raise refused_user(s.username, exc) from None
        self._token = payload.get("token")

    def list_range(self, start: bytes, end: bytes, timeout: float) -> tuple[int, list[KeyValue]]:
        """Every key in [start, end) at one revision: (header revision, key-values)."""
        body = {"key": _b64(start), "range_end": _b64(end)}
        for attempt in (1, 2):
            if self._settings.username and self._token is None:
                self._authenticate(timeout)
            try:
                payload = self._post("/v3/kv/range", body, timeout)
                break
            except AuthError as exc:
                # Simple auth tokens expire after 5 idle minutes: authenticate once more.
                if attempt == 1 and "invalid auth token" in str(exc):
                    self._token = None
                    continue
                raise
        try:
            kvs = [
                KeyValue(
                    base64.b64decode(kv["key"]).decode("utf-8", "replace"),
                    base64.b64decode(kv.get("value", "")),
                    int(kv.get("mod_revision", 0)),
                    int(kv.get("create_revision", 0)),
                )
                for kv in payload.get("kvs", [])
            ]
            return int(payload["header"]["revision"]), kvs
        except (KeyError, TypeError, ValueError, AttributeError) as exc:  # binascii.Error is a ValueError
            raise Unavailable(f"{self._cursor.current}: not an etcd range answer ({exc!r})") from None

    # --- membership leases -------------------------------------------------------
    # Unary POSTs on the JSON gateway, so registering and renewing from a request's
    # helper thread never imports gRPC. Used by `config_watch.membership` only.

    def _authorized_post(self, path: str, body: dict, timeout: float) -> dict:
        for attempt in (1, 2):
            if self._settings.username and self._token is None:
                self._authenticate(timeout)
            try:
                return self._post(path, body, timeout)
            except AuthError as exc:
                # Simple auth tokens expire after 5 idle minutes: authenticate once more.
                if attempt == 1 and "invalid auth token" in str(exc):
                    self._token = None
                    continue
                raise
        raise AssertionError("unreachable")

    def lease_grant(self, ttl: int, timeout: float) -> tuple[int, int]:
        """A new lease: (lease id, TTL granted in seconds)."""
        payload = self._authorized_post("/v3/lease/grant", {"TTL": int(ttl)}, timeout)
        if payload.get("error"):
            raise EtcdError(f"lease grant refused: {payload['error']}")
        try:
            return int(payload["ID"]), int(payload.get("TTL", ttl))
        except (KeyError, TypeError, ValueError) as exc:
            raise Unavailable(f"not a lease grant answer ({exc!r})") from None

    def lease_keepalive(self, lease_id: int, timeout: float) -> int:
        """Renew a lease once: the TTL it now has, 0 if it no longer exists."""
        payload = self._authorized_post("/v3/lease/keepalive", {"ID": str(lease_id)}, timeout)
        # A streaming call through the gateway: one `{"result": ...}` (or `{"error": ...}`) line.
        error = payload.get("error")
        if error:
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            code = error.get("grpc_code", error.get("code")) if isinstance(error, dict) else None
            raise error_for_code(code if isinstance(code, int) else None, message, "lease keepalive")
        result = payload.get("result", payload)
        try:
            return int(result.get("TTL", 0))
        except (TypeError, ValueError, AttributeError) as exc:
            raise Unavailable(f"not a lease keepalive answer ({exc!r})") from None

    def put(self, key: str, value: str, timeout: float, lease: int = 0) -> int:
        """Write `key` (bound to `lease` if given); the revision of the write."""
        body = {"key": _b64(key.encode()), "value": _b64(value.encode())}
        if lease:
            body["lease"] = str(lease)
        payload = self._authorized_post("/v3/kv/put", body, timeout)
        try:
            return int(payload["header"]["revision"])
        except (KeyError, TypeError, ValueError) as exc:
            raise Unavailable(f"not a put answer ({exc!r})") from None

    def lease_revoke(self, lease_id: int, timeout: float) -> None:
        """End a lease now, deleting every key bound to it."""
        self._authorized_post("/v3/lease/revoke", {"ID": str(lease_id)}, timeout)
