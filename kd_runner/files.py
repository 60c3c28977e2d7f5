"""Safe file handling: atomic writes (temp file + rename), inter-process locks, checked weight loading.

Every file the tool writes goes through `atomic_path`, so a reader never sees a half-written file,
whether the writer finished, crashed or was killed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import torch

from kd_runner.errors import UserError


@contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `path` in one rename, on failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path | str, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_torch(obj, path: Path | str) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def file_lock(path: Path | str) -> Iterator[None]:
    """An exclusive inter-process lock (flock) held for the duration of the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_state_dict(path: Path | str, key: str) -> dict:
    """Read a state dict with weights_only=True: a file carrying pickled code, or no file, is a user error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{key}={str(path)!r}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupted, or pickled code refused by weights_only
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{key}={str(path)!r} cannot be read as a weights-only state dict ({first[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{key}={str(path)!r} is not a state dict (a mapping of parameter names to tensors)")
    return state


def apply_state_dict(model: torch.nn.Module, state: dict, key: str, expected: str) -> None:
    """Load `state` into `model` strictly; on any mismatch name what was expected and what was found."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or unexpected or shapes:
        found = []
        if missing:
            found.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            found.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        if shapes:
            k = shapes[0]
            found.append(f"shape of {k} is {tuple(state[k].shape)}, expected {tuple(own[k].shape)}")
        raise UserError(f"{key} does not match {expected}: " + "; ".join(found))
    model.load_state_dict(state)
