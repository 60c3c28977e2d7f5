"""Graceful stop on SIGTERM and SIGINT (cluster preemption, Ctrl-C).

The first signal only records itself: training stops at its next safe point (between two batches),
writes a checkpoint and raises RunInterrupted. A second signal stops at once (KeyboardInterrupt); the
files are still whole, because every write is atomic, and the last checkpoint is kept.
"""

from __future__ import annotations

import logging
import signal

log = logging.getLogger(__name__)
_received: list[str] = []


def install() -> None:
    """Route SIGTERM and SIGINT to the graceful stop (main thread only, as Python requires)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _handle)


def requested() -> str | None:
    """The name of the signal that asked the process to stop, or None."""
    return _received[0] if _received else None


def _handle(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    if _received:
        raise KeyboardInterrupt(name)
    _received.append(name)
    log.warning("%s received: stopping at the next safe point (send it again to stop at once)", name)
