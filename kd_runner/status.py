"""The status vocabulary of a run: what result.json, runs.csv and the sweep summary say about each job.

A str Enum, so a status is written to JSON and CSV as its plain value and compares equal to it.
"""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    RUNNING = "running"  # result.json while the run is in progress
    COMPLETED = "completed"  # final metrics recorded
    FAILED = "failed"  # a user mistake found once the run started, or a bug
    DIVERGED = "diverged"  # a NaN/inf loss or metric: final, a re-run would only repeat it
    INTERRUPTED = "interrupted"  # stopped by SIGTERM/SIGINT after a checkpoint: a re-run resumes it
    INCOMPLETE = "incomplete"  # started, never finished (killed while "running", or no result.json)
    NOT_STARTED = "not started"  # planned in a sweep, no job directory
    DAMAGED = "damaged"  # a job directory whose files cannot be read (changed or truncated from outside)

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        """Whether a re-run of the same config would only repeat this outcome (so it is skipped)."""
        return self in (Status.COMPLETED, Status.DIVERGED)
