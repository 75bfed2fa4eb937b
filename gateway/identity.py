"""Who a request is, for rate limiting.

The `X-Api-Key` header if present (hashed, so a huge or odd key costs a fixed few
bytes), else the client address. `X-Forwarded-For` is honoured only for the configured
number of trusted proxy hops, with werkzeug `ProxyFix`'s rule (the entry `hops` from
the right, else the peer address), so a client cannot pick its own identity.
"""

from __future__ import annotations

import hashlib


def client_address(environ: dict, trusted_hops: int) -> str:
    """The client's address, trusting `trusted_hops` proxies' X-Forwarded-For entries.

    The header is split on commas here rather than by ProxyFix: its quoted-list parser
    returns nothing for a stray quote, and a client could then send `"x` to make the
    trusted proxy's entry vanish and share the proxy's own bucket.
    """
    remote = environ.get("REMOTE_ADDR") or "unknown"
    if trusted_hops <= 0:
        return remote
    header = environ.get("HTTP_X_FORWARDED_FOR", "")
    entries = [part.strip() for part in header.split(",")]
    if header and len(entries) >= trusted_hops and entries[-trusted_hops]:
        return entries[-trusted_hops]
    return remote


def client_identity(environ: dict, trusted_hops: int) -> str:
    api_key = environ.get("HTTP_X_API_KEY")
    if api_key:
        digest = hashlib.blake2b(api_key.encode("utf-8", "surrogateescape"), digest_size=12).hexdigest()
        return "key:" + digest
    return "ip:" + client_address(environ, trusted_hops)
