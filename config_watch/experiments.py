"""A/B assignment: which variant of an experiment a client is in.

Deterministic and language-neutral (the scheme is `ASSIGNMENT_SCHEME` in the schema,
exported by `python -m config_watch schema`): the gateway, the data processor, the
OpenFeature provider or a service in another language put one client in the same
variant from the same split, with no shared state and no call to anyone.

The bucket is LaunchDarkly's: the first 15 hex digits of SHA-1("<name>.<identity>")
over 0xFFFFFFFFFFFFFFF. Variants take consecutive ranges of it in the order listed,
so a variant that grows while the others shrink keeps every client it had: its range
can only widen (its start is the sum of the weights before it, its end 100 minus the
sum of those after it).
"""

from __future__ import annotations

import hashlib
from typing import Mapping

from ._schema import EXPERIMENTS, Variant

# 15 hex digits are 60 bits, more than a double holds exactly, so the comparison is
# made in integers (`h * 100 < cumulative * _SCALE`): the same answer in any language.
_HEX_DIGITS = 15
_SCALE = 0xFFFFFFFFFFFFFFF


def bucket(experiment: str, identity: str) -> int:
    """The client's point in 0.._SCALE for `experiment` (the integer h of the scheme)."""
    digest = hashlib.sha1(f"{experiment}.{identity}".encode("utf-8", "surrogateescape")).hexdigest()
    return int(digest[:_HEX_DIGITS], 16)


def variant_for(split: tuple[Variant, ...], experiment: str, identity: str) -> str:
    """The variant of `split` that `identity` is in for `experiment`."""
    h = bucket(experiment, identity)
    cumulative = 0
    for variant in split:
        cumulative += variant.weight
        if h * 100 < cumulative * _SCALE:
            return variant.name
    # Only h == _SCALE (bucket 1.0) gets here: the last variant that takes anyone.
    return next(v.name for v in reversed(split) if v.weight > 0)


def assign(snapshot, experiment: str, identity: str) -> str | None:
    """The variant `identity` is in for `experiment` in `snapshot` (None: no such experiment)."""
    split = snapshot.family(EXPERIMENTS).get(experiment)
    if split is None:
        return None
    return variant_for(split, experiment, identity)


def assignments(snapshot, identity: str) -> dict[str, str]:
    """Every running experiment's variant for `identity`, sorted by experiment name."""
    splits: Mapping[str, tuple[Variant, ...]] = snapshot.family(EXPERIMENTS)
    return {name: variant_for(splits[name], name, identity) for name in sorted(splits)}


def experiments_header(assigned: Mapping[str, str]) -> str:
    """`X-Experiments` value: `name=variant` pairs, comma-separated, sorted by name."""
    return ",".join(f"{name}={assigned[name]}" for name in sorted(assigned))
