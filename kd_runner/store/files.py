"""Safe file handling: atomic writes (temp file + rename), inter-process locks, digests, why a torch file
would not load. Checksummed cache entries are in `cache.py`, state dicts in `state_dicts.py`.

Every file the tool writes goes through `atomic_path`, so a reader never sees a half-written file,
whether the writer finished, crashed or was killed. Torch is imported only by the functions that read or
write tensors, so the CLI's checks and the sweep tables (kd-aggregate, kd-report) start without it.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from kd_runner.errors import RunInterrupted, UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left, or the user's disk quota reached
LOCK_POLL_S = 0.2  # how often a process waiting for a lock checks whether it was asked to stop


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `path` in one rename, on failure it is removed.
    A full disk is a UserError naming the file, not a traceback: the user can free space or write elsewhere."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        raise UserError(
            f"the disk is full: cannot write {path} ({os.strerror(exc.errno)}); free space on the disk of "
            f"{path.parent}, or write elsewhere (hydra.run.dir, hydra.sweep.dir, cache_dir)"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_csv(path: Path | str, frame) -> None:
    """A pandas DataFrame as CSV, without its index."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)


def save_torch(obj, path: Path | str) -> None:
    """torch.save through a Python file, so a full disk raises OSError(ENOSPC) rather than torch's RuntimeError."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def digest(obj) -> str:
    """A short stable digest of plain JSON-able values (configs, cache keys): equal digests, equal values."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def tensors_digest(tensors, header: object = None) -> str:
    """A short digest of tensors' dtypes, shapes and values (in order), after a JSON-able `header`."""
    import torch

    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode())
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def file_lock(path: Path | str, stop: Callable[[], object] | None = None, stage: str | None = None) -> Iterator[None]:
    """An exclusive inter-process lock (flock) held for the duration of the block.

    In a folder this process may only read (a shared, read-only cache) the lock file is opened read-only,
    which flock accepts; without one there, no process can write the folder, so reading needs no lock.
    With `stop`, a process waiting for the lock (another is training that teacher, maybe for hours) raises
    RunInterrupted(`stage`) as soon as `stop()` turns true (SIGTERM/SIGINT), rather than waiting on.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):  # e.g. a folder the system will not make
            raise UserError(f"cannot create {path} ({exc.strerror}): choose another cache_dir") from None
        fd = os.open(path, os.O_RDONLY) if path.exists() else None
    if fd is None:
        yield
        return
    try:
        _acquire(fd, stop, stage)
        yield
    finally:
        os.close(fd)  # releases the lock


def _acquire(fd: int, stop: Callable[[], object] | None, stage: str | None) -> None:
    """flock; polled when `stop` is given, as a blocking flock is resumed after each signal and never sees it."""
    if stop is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if stop():
                raise RunInterrupted(stage) from None
            time.sleep(LOCK_POLL_S)


@contextmanager
def directory_lock(path: Path | str) -> Iterator[None]:
    """An exclusive inter-process lock on a directory itself (no lock file left behind).

    Raises BlockingIOError at once when another process holds it; the kernel releases it when the
    holder exits, however it exits.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


def remove_stale_temps(folder: Path | str, prefix: str = "") -> None:
    """Delete the temporary files `atomic_path` leaves when its writer is killed (named `.<prefix>*.tmp`).

    Call it only while holding the lock that keeps every other writer of those files away.
    """
    for tmp in Path(folder).glob(f".{prefix}*.tmp"):
        tmp.unlink(missing_ok=True)


def remove_orphan_temps(folder: Path | str) -> None:
    """Delete the temporary files of `atomic_path` writers that are gone (the name holds the writer's pid):
    safe without a lock, as a live writer's file is kept."""
    for tmp in Path(folder).glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def check_writable(path: Path | str, key: str) -> None:
    """Raise UserError unless `path` is, or can be created as, a directory this process may write in."""
    target = Path(path).absolute()
    try:
        existing = next(p for p in (target, *target.parents) if p.exists())
    except OSError as exc:  # a name longer than the file system allows, a loop of links, ...
        raise UserError(f"{key}={str(path)!r} cannot be created: {exc.strerror}") from None
    if not existing.is_dir():
        raise UserError(f"{key}={str(path)!r} cannot be created: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"{key}={str(path)!r} cannot be written: {existing} is not writable "
            "(permissions or a read-only file system)"
        )


def load_failure_reason(exc: Exception) -> str:
    """Why `torch.load(..., weights_only=True)` failed, in a few words instead of torch's long advice."""
    code = re.search(r"unsupported global:?(?: GLOBAL)? (\S+)", str(exc), re.IGNORECASE)  # both wordings of torch
    if code:  # a pickle that imports something (any other weights-only failure is a file that is not a pickle)
        return (
            f"it holds pickled code or objects ({code.group(1)}), which weights-only loading refuses; "
            "save a plain state dict (model.state_dict()) instead"
        )
    return f"the file is truncated, corrupted or not a PyTorch file ({type(exc).__name__})"
