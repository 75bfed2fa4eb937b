"""Who a request is, for rate limiting.

The `X-Api-Key` header if present (hashed, so a huge or odd key costs a fixed few
bytes), else the client address. Forwarded headers are honoured only for the
configured number of trusted proxy hops, with werkzeug's `ProxyFix` doing the
reading, so a client cannot pick its own identity by sending `X-Forwarded-For`.
"""

from __future__ import annotations

import hashlib

from werkzeug.middleware.proxy_fix import ProxyFix


def _remote_addr(environ: dict) -> str:
    return environ.get("REMOTE_ADDR") or "unknown"


# ProxyFix is WSGI middleware; wrapped around this app it hands back the fixed environ.
_FIXERS: dict[int, ProxyFix] = {}


def _fixer(hops: int) -> ProxyFix:
    fixer = _FIXERS.get(hops)
    if fixer is None:
        fixer = _FIXERS[hops] = ProxyFix(_remote_addr_app, x_for=hops, x_proto=0, x_host=0, x_port=0, x_prefix=0)
    return fixer


def _remote_addr_app(environ, start_response):
    return _remote_addr(environ)


def client_address(environ: dict, trusted_hops: int) -> str:
    """The client's address, trusting `trusted_hops` proxies' X-Forwarded-For entries."""
    if trusted_hops <= 0:
        return _remote_addr(environ)
    # ProxyFix rewrites the environ it is given: give it a copy.
    return _fixer(trusted_hops)(dict(environ), None)


def client_identity(environ: dict, trusted_hops: int) -> str:
    api_key = environ.get("HTTP_X_API_KEY")
    if api_key:
        digest = hashlib.blake2b(api_key.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
        return "key:" + digest
    return "ip:" + client_address(environ, trusted_hops)
