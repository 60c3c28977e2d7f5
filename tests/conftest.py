"""Fixtures shared by the tests (the helpers they share are in helpers.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from helpers import kd_run


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory) -> Path:
    """No test writes to the user's cache (~/.cache/kd-runner): the session's default cache is a temporary
    folder (also for every kd-run a test starts: they inherit the environment)."""
    cache = tmp_path_factory.mktemp("kd-cache")
    saved = os.environ.get("KD_RUNNER_CACHE")
    os.environ["KD_RUNNER_CACHE"] = str(cache)
    yield cache
    if saved is None:
        del os.environ["KD_RUNNER_CACHE"]
    else:
        os.environ["KD_RUNNER_CACHE"] = saved


@pytest.fixture(autouse=True)
def default_cache(monkeypatch, tmp_path) -> Path:
    """Each test's default cache is its own, `tmp_path/outputs/cache`, so no test loads a teacher another
    trained unless it asks to."""
    cache = tmp_path / "outputs" / "cache"
    monkeypatch.setenv("KD_RUNNER_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """One real `kd-run experiment=smoke` in a fresh directory (its teacher is trained, not cached: into its
    own cache, `cwd/cache`, which other module- or session-scoped runs do not share)."""
    cwd = tmp_path_factory.mktemp("smoke")
    proc = kd_run("experiment=smoke", "hydra.run.dir=run1", f"cache_dir={cwd / 'cache'}", cwd=cwd)
    return cwd, proc


@pytest.fixture
def smoke_cache(smoke_run, monkeypatch) -> Path:
    """The default cache of this test is smoke_run's, as a user's is for every command."""
    cache = smoke_run[0] / "cache"
    monkeypatch.setenv("KD_RUNNER_CACHE", str(cache))
    return cache
