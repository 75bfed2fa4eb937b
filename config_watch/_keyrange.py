"""Key ranges in etcd's terms: a prefix as [start, end), several prefixes as one range."""

from __future__ import annotations


def prefix_range_end(prefix: bytes) -> bytes:
    """etcd's range end for every key starting with `prefix`."""
    end = bytearray(prefix)
    for i in range(len(end) - 1, -1, -1):
        if end[i] < 0xFF:
            end[i] += 1
            return bytes(end[: i + 1])
    return b"\0"


def covering_range(prefixes: list[str]) -> tuple[bytes, bytes]:
    """One key range that holds every prefix.

    One range means one watch, and etcd delivers every event of a revision in one
    response of one watch, so a transaction touching the service's keys and the
    global keys arrives whole. Keys in between are filtered out by the caller.
    """
    encoded = sorted(p.encode() for p in prefixes)
    return encoded[0], max(prefix_range_end(p) for p in encoded)
