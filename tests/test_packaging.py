"""The wheel ships the configs: a plain (non-editable) install runs `kd-run` from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def source_copy(dest):
    """The project's files (tracked, or new and not ignored) copied to `dest`: a build from it cannot pick up
    a stale build/ folder of the checkout."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    )
    for name in listed.stdout.splitlines():
        if (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    return dest


def test_wheel_contains_configs_and_runs_from_another_directory(tmp_path):
    wheel_dir = tmp_path / "dist"
    source = source_copy(tmp_path / "source")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(source),
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    (wheel,) = wheel_dir.glob("kd_runner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    repo_configs = {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert repo_configs and {f"kd_runner/conf/{c}" for c in repo_configs} <= names
    assert {"kd_runner/cli/kd_run.py", "kd_runner/run/run.py", "hydra_plugins/kd_runner_sweeper/__init__.py"} <= names
    # every package of the checkout is in the wheel (a missing one would be found in the checkout by the editable
    # install's finder when the installed copy runs below, so the run alone would not show it)
    packages = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "kd_runner").rglob("__init__.py")}
    assert {f"{package}/__init__.py" for package in packages} <= names

    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, kd_runner.cli.kd_run as c; print(c.__file__, file=sys.stderr); c.main()",
            "experiment=smoke",
            "hydra.run.dir=run",
        ],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert str(site) in proc.stderr  # the installed copy ran, not the checkout
    assert (elsewhere / "run" / "result.json").is_file()
