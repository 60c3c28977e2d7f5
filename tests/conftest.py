"""Fixtures shared by the tests (the helpers they share are in helpers.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from helpers import kd_run


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real `kd-run experiment=smoke` in a fresh directory (its teacher is trained, not cached)."""
    cwd = tmp_path_factory.mktemp("smoke")
    proc = kd_run("experiment=smoke", "hydra.run.dir=run1", cwd=cwd)
    return cwd, proc
