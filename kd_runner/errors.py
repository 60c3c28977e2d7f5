"""How a run ends other than by completing, each reported as one line with its own exit code, never a traceback.

A mistake in input (UserError) exits 2, a diverged run 3, an interrupted one 75, a bug 1; see
docs/robustness.md. Each error carries the status result.json records for it and the `details` that go
beside it, so one handler can record any of them.
"""

from __future__ import annotations

from kd_runner.status import Status


class UserError(Exception):
    """A mistake the user can fix (bad value, missing file, mismatched checkpoint). Exit code 2."""

    exit_code = 2
    status = Status.FAILED  # what result.json says when the mistake shows only once the run has started
    details: dict = {}


class ConfigError(UserError):
    """A config key holds a value that is not allowed."""

    def __init__(self, key: str, value, allowed: str):
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is not allowed: {allowed}")


class RunInterrupted(Exception):
    """A signal (SIGTERM, SIGINT) stopped the run at a safe point, after its checkpoint was written.

    Exit code 75 (sysexits' EX_TEMPFAIL: try again): running the same command again resumes the run.
    """

    exit_code = 75
    status = Status.INTERRUPTED

    def __init__(self, stage: str | None, epoch: int = 0, batches: int = 0):
        self.stage, self.epoch, self.batches = stage, epoch, batches
        where = f"in the {stage} stage at epoch {epoch}, after {batches} batches" if stage else "before it started"
        super().__init__(f"stopped {where}")

    def __reduce__(self):  # pickled whole: a parallel launcher's worker hands it to kd-run's main process
        return RunInterrupted, (self.stage, self.epoch, self.batches)

    @property
    def details(self) -> dict:
        return {"stage": self.stage, "epoch": self.epoch, "batches": self.batches}


class Diverged(Exception):
    """A training stage produced a NaN or infinite loss or metric. Exit code 3; in a sweep the other jobs go on."""

    exit_code = 3
    status = Status.DIVERGED

    def __init__(self, stage: str, epoch: int, message: str):
        self.stage, self.epoch = stage, epoch
        super().__init__(message)

    @property
    def details(self) -> dict:
        return {"stage": self.stage, "epoch": self.epoch}


def one_line(exc: BaseException, limit: int = 240) -> str:
    """An error as one short line: its type and its message with the line breaks folded (torchvision's
    download errors, for one, span several lines), cut at `limit` characters."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:limit]}" if text else type(exc).__name__
