"""The experiments step: which variant of each running experiment the client is in.

The assignment is config_watch's (`assignments`: deterministic per experiment and
client identity, the scheme in `python -m config_watch schema`), applied to the
identity the rate limiter uses, so the processor or any other service holding the same
identity puts the client in the same variants.
"""

from __future__ import annotations

from config_watch import EXPERIMENTS, assignments, experiments_header

HEADER = "X-Experiments"


def running(snapshot) -> bool:
    """Whether any experiment is running."""
    return bool(snapshot.family(EXPERIMENTS))


def header_value(snapshot, identity: str) -> str | None:
    """`name=variant,...` sorted by name, or None when no experiment is running."""
    if not running(snapshot):
        return None
    return experiments_header(assignments(snapshot, identity))
