"""What this process was given: its cores and its place under torchrun, read from the OS and the
environment without torch, so the CLI's preflight can use them before (or without) importing it."""

from __future__ import annotations

import os


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, e.g. under taskset or a cluster's allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def launched_world_size() -> int:
    """The number of processes torchrun started (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    return int(os.environ.get("RANK", "0"))
