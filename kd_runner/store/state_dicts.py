"""State dicts: read one safely, say in one line how it differs from a network, load it only when it fits.

Every weight the runner loads (weights_path, teacher.checkpoint, a training checkpoint, a cached teacher,
a run's student) goes through `load_exact`: torch's own strict load answers a misfit with a many-line
RuntimeError, and a non-strict one would load half a network without a word.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch

from kd_runner.errors import UserError
from kd_runner.store.files import load_failure_reason


def read_state_dict(path: Path | str, key: str) -> Mapping[str, torch.Tensor]:
    """Read a state dict with weights_only=True: a missing, truncated or code-carrying file is a user error.

    RepDistiller-style checkpoints that keep the state dict under "model" are unwrapped.
    """
    if not os.path.isfile(path):
        raise UserError(f"{key}={str(path)!r}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, corrupted, or pickled code refused by weights_only
        raise UserError(f"{key}={str(path)!r}: cannot read a state dict: {load_failure_reason(exc)}") from None
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping):
        raise UserError(f"{key}={str(path)!r} holds a {type(obj).__name__}, not a state dict")
    return obj


def load_exact(model: torch.nn.Module, state: object, misfit: str | None = None) -> bool:
    """Load `state` into `model` when its keys and shapes are exactly the model's, and say True.

    When they are not, `misfit` (the file, and what it should have been) makes it a one-line UserError
    "`misfit`: what differs"; without one it is False and the model is untouched (a cache entry that does
    not fit is made again, not an error).
    """
    problem = (
        state_dict_mismatch(model, state)
        if isinstance(state, Mapping)
        else f"a {type(state).__name__}, not a state dict"
    )
    if problem is None:
        model.load_state_dict(state)
        return True
    if misfit is not None:
        raise UserError(f"{misfit}: {problem}")
    return False


def state_dict_mismatch(model: torch.nn.Module, state: Mapping) -> str | None:
    """How `state` differs from `model`'s own state dict, in one line; None when it loads exactly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [
        k
        for k in expected
        if k in state and (not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {missing[0]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {unexpected[0]})")
    if reshaped:
        k = reshaped[0]
        problems.append(
            f"{len(reshaped)} shape mismatches (first: {k} is {_shape(state[k])} in the file, "
            f"{_shape(expected[k])} in the model)"
        )
    return "; ".join(problems) or None


def _shape(value) -> str:
    return str(tuple(value.shape)) if isinstance(value, torch.Tensor) else type(value).__name__
