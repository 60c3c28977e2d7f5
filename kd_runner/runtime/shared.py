"""Work the jobs of one sweep share within its process: the built dataset and its device copy, the
prepared teachers, their soft targets.

A sweep's jobs mostly differ in scalars (alpha, temperature, seed), so job after job would otherwise
rebuild the same dataset, copy it to the device, build and load the same teacher and read the same
logits. `Shared` keeps the last few of each kind, under the very keys the caches use (a job with
another teacher, data or compute setting gets its own), for the lifetime of one sweep (kd-run's
sweeper makes one per call; a single run makes none and computes everything itself). What is kept is
only read by later jobs, never changed, so each job computes exactly what it would alone.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Shared:
    """Up to `keep` values of each kind, by key, least recently used dropped first (device memory)."""

    def __init__(self, keep: int = 2):
        self.keep = keep
        self.kinds: dict[str, OrderedDict] = {}

    def get(self, kind: str, key: str, make: Callable[[], T]) -> tuple[T, bool]:
        """(the `kind` value under `key`, whether it was made now): kept from an earlier job, else `make()`
        (then kept)."""
        kept = self.kinds.setdefault(kind, OrderedDict())
        if key in kept:
            kept.move_to_end(key)
            log.info("%s: shared with an earlier job of the sweep (key %s)", kind, key)
            return kept[key], False
        value = make()
        kept[key] = value
        while len(kept) > self.keep:
            kept.popitem(last=False)
        return value, True


def shared_or_made(shared: Shared | None, kind: str, key: str, make: Callable[[], T]) -> tuple[T, bool]:
    """(`make()`, True), or (the value a sweep's earlier job made under the same key, False) when `shared`
    is given."""
    return (make(), True) if shared is None else shared.get(kind, key, make)
