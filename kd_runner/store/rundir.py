"""What a run directory already holds, and the claim a run holds on it while it writes there.

Running the same config into the same directory again is always safe: a finished run (completed or
diverged) is skipped, an unfinished one (interrupted, killed, failed) continues from its last
checkpoint, and a directory that holds a run of another config is refused with one line, never mixed.
A sweep re-run into the same `hydra.sweep.dir` therefore skips its finished jobs and resumes the rest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from kd_runner.errors import UserError
from kd_runner.status import Status
from kd_runner.store.files import directory_lock, remove_stale_temps

RESULT = "result.json"
FINISHED = tuple(s.value for s in Status if s.finished)  # outcomes a re-run would only repeat


def previous_record(run_dir: Path | str) -> dict | None:
    """The result.json a run left in `run_dir` (any status), or None when there is none."""
    path = Path(run_dir) / RESULT
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except ValueError:  # written atomically, so only damage from outside can cause this
        raise UserError(
            f"{path} is not valid JSON: delete it (the run then starts over) or use another directory"
        ) from None
    if not isinstance(record, dict):
        raise UserError(
            f"{path} holds a JSON {type(record).__name__}, not a kd-run record: delete it (the run then starts "
            "over) or use another directory"
        )
    return record


def finished_record(run_dir: Path | str, digest: str) -> dict | None:
    """The record of this config's finished run in `run_dir`, to reuse instead of running again.

    None when the directory holds no run or an unfinished run of this config (which then resumes).
    A run of another config there is a UserError: its files must not be mixed with this one's.
    """
    record = previous_record(run_dir)
    if record is None:
        return None
    if record.get("config_digest") != digest:
        raise UserError(
            f"{run_dir} already holds a run of another config or of other code of yours (config digest "
            f"{record.get('config_digest')}, this run {digest}): choose another hydra.run.dir / hydra.sweep.dir, "
            "or delete that directory"
        )
    return record if record.get("status") in FINISHED else None


def student_checkpoint(run_dir: Path | str) -> Path:
    """Where the student stage keeps its checkpoint while the run is unfinished."""
    return Path(run_dir) / "student-checkpoint.pt"


def init_checkpoint(run_dir: Path | str) -> Path:
    """Where a method's init stage keeps its checkpoint while the run is unfinished."""
    return Path(run_dir) / "init-checkpoint.pt"


@contextmanager
def claim(run_dir: Path | str) -> Iterator[Path]:
    """Hold `run_dir` for one run: a second process running into it is refused with a UserError.

    Temporary files that a killed writer left there are removed first.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with ExitStack() as held:
        try:
            held.enter_context(directory_lock(run_dir))
        except BlockingIOError:
            raise UserError(
                f"{run_dir} is in use by another kd-run process: wait for it, or use another directory"
            ) from None
        remove_stale_temps(run_dir)
        yield run_dir
