"""Graceful stop on SIGTERM and SIGINT (cluster preemption, Ctrl-C).

The first signal only records itself: training stops at its next safe point (between two batches),
writes a checkpoint and raises RunInterrupted. A second signal stops at once (KeyboardInterrupt); the
files are still whole, because every write is atomic, and the last checkpoint is kept. Outside that
block (kd-run's checks before a run, its exit after one), `exit_on_signal` ends the process at once
with exit code 75 and one line, never by the signal itself or with a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from kd_runner.errors import RunInterrupted

log = logging.getLogger(__name__)
_received: list[str] = []


@contextmanager
def graceful_stop() -> Iterator[None]:
    """Route SIGTERM and SIGINT to the graceful stop inside the block (main thread only, as Python requires)."""
    _received.clear()
    previous = {sig: signal.signal(sig, _handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _received.clear()


def exit_on_signal(prog: str, hint: str = "run the same command again to resume") -> None:
    """Until `graceful_stop` takes over (and again after it), SIGTERM/SIGINT exit `prog` at once with exit
    code 75 and one line ending in `hint`: nothing is being written then, or only atomically."""

    def stop_now(signum: int, frame) -> None:
        print(f"{prog}: stopped at once by {signal.Signals(signum).name}; {hint}", file=sys.stderr)
        raise SystemExit(RunInterrupted.exit_code)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop_now)


def active() -> bool:
    """Whether this process is inside `graceful_stop` (kd-run's main process is; a launcher's worker is not)."""
    return signal.getsignal(signal.SIGINT) is _handle


def requested() -> str | None:
    """The name of the signal that asked the process to stop, or None."""
    return _received[0] if _received else None


class StopNow(KeyboardInterrupt):
    """A second signal: stop at once. Told apart from a KeyboardInterrupt that a parallel launcher hands
    over from a job's process, which is no second signal."""


def _handle(signum: int, frame) -> None:
    name = signal.Signals(signum).name
    if _received:
        raise StopNow(name)
    _received.append(name)
    log.warning("%s received: stopping at the next safe point (send it again to stop at once)", name)
