"""What this process was given: its cores, its threads and its place under torchrun, read from the OS and
the environment without torch, so the CLI's preflight can use them before (or without) importing it."""

from __future__ import annotations

import os

from kd_runner.errors import UserError


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, e.g. under taskset or a cluster's allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def environment_threads() -> tuple[int, str]:
    """The CPU threads the environment gives this process when `threads` is not set, and where the count
    comes from: OMP_NUM_THREADS (which torchrun also sets), else this machine's cores shared among
    torchrun's processes on it, else all its cores."""
    omp = omp_threads()
    if omp is not None:
        return omp, "OMP_NUM_THREADS"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local > 1:
        return max(1, cpu_cores() // local), f"torchrun: {cpu_cores()} cores / {local} processes"
    return cpu_cores(), "all cores"


def omp_threads() -> int | None:
    """OMP_NUM_THREADS as a count (its first level when it lists nested ones), None when unset; a value
    that is not a whole number in [1, cores] is one line."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if not value:
        return None
    first = value.split(",")[0].strip()
    cores = os.cpu_count() or 1
    if not first.isdigit() or not 1 <= int(first) <= cores:
        raise UserError(
            f"OMP_NUM_THREADS={value!r} is not allowed: expected a whole number in [1, {cores}]; or unset it "
            "(threads= then defaults to all cores)"
        )
    return int(first)


def launched_world_size() -> int:
    """The number of processes torchrun started (1 when not under torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    return int(os.environ.get("RANK", "0"))
