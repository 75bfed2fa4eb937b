"""The compute job: a fingerprint of the request body.

Each round hashes the body with SHA-256 and BLAKE2b, chained to the previous round's
digests, and compresses it with zlib (the compressed size tells how compressible the
data is). hashlib (for inputs of 2 KiB and more) and zlib release the GIL while they
work, so a pool of N threads runs N jobs at once on N cores.
"""

from __future__ import annotations

import hashlib
import zlib

# zlib's default trade-off between speed and ratio.
_ZLIB_LEVEL = 6


def fingerprint(body: bytes, rounds: int) -> dict:
    """The body's digests after `rounds` chained rounds, and its compressed size."""
    view = memoryview(body)
    sha = b""
    blake = b""
    compressed = 0
    for _ in range(rounds):
        sha_h = hashlib.sha256(sha)
        sha_h.update(view)
        blake_h = hashlib.blake2b(blake)
        blake_h.update(view)
        sha, blake = sha_h.digest(), blake_h.digest()
        compressed = len(zlib.compress(view, _ZLIB_LEVEL))
    return {
        "bytes": len(body),
        "rounds": rounds,
        "sha256": sha.hex(),
        "blake2b": blake.hex(),
        "zlib_bytes": compressed,
        "crc32": f"{zlib.crc32(view):08x}",
    }
