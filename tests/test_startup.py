"""A fast start: kd-run's --help, --version, --shell-completion and every mistake the config's checks catch,
and kd-aggregate / kd-report, answer without importing torch, torchvision or scikit-learn (each console
script runs in a fresh process that reports the packages it imported); every builder the registries in
kd_runner.names point to exists, and the tables of torchvision's networks and datasets name the same ones."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pkgutil import resolve_name

import pytest
from test_aggregate import grid_sweep

import kd_runner
from kd_runner import names
from kd_runner.data import vision
from kd_runner.models import torchvision_nets

HEAVY = ("torch", "torchvision", "sklearn")
# runs a console script's entry point ("module:function") with the given arguments, as the script does,
# and at exit prints on stderr's last line (JSON) the HEAVY packages the process imported
WRAPPER = f"""
import atexit, importlib, json, sys
atexit.register(lambda: print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr))
module, function = sys.argv[1].split(":")
sys.argv = sys.argv[1:]
sys.exit(getattr(importlib.import_module(module), function)())
"""
SCRIPTS = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="console_scripts")}


def run_script(name: str, *args: str, cwd) -> tuple[subprocess.CompletedProcess, list[str], list[str]]:
    """The finished process, its stderr lines (without the report) and the HEAVY packages it imported."""
    proc = subprocess.run(
        [sys.executable, "-c", WRAPPER, SCRIPTS[name], *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    *errors, imported = proc.stderr.splitlines()
    return proc, errors, json.loads(imported)


@pytest.mark.parametrize(
    "args",
    [
        ["alpha=2"],
        ["teacher=resnet5"],
        ["dataset=imagenet21k"],
        ["student.lr=-1"],
        ["soft_loss=l2"],
        ["precision=fp8"],
        ["optimize_metric=f1"],
        ["dataset.download=true"],
        ["student.pretrained=true"],
        ["distill=dkd", "distill.beta=1"],
    ],
)
def test_a_config_mistake_is_one_line_and_exit_2_without_torch(args, tmp_path):
    proc, errors, imported = run_script("kd-run", *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and errors[0].startswith("kd-run: error: ") and "is not allowed" in errors[0]
    assert imported == []
    assert list(tmp_path.iterdir()) == []


def test_a_data_folder_missing_is_found_after_the_config_with_torchvision(tmp_path):
    """The check that needs torchvision runs once the config has passed: a control that the report sees it."""
    proc, errors, imported = run_script("kd-run", "dataset=mnist", f"dataset.root={tmp_path / 'none'}", cwd=tmp_path)
    assert proc.returncode == 2 and len(errors) == 1 and "dataset.root" in errors[0]
    assert "torch" in imported and "torchvision" in imported


def test_help_lists_the_groups_and_keys_without_torch(tmp_path):
    proc, _, imported = run_script("kd-run", "--help", cwd=tmp_path)
    assert proc.returncode == 0
    for group in ("dataset: ", "teacher: ", "student: ", "experiment: ", "sweep: "):
        assert f"\n{group}" in proc.stdout
    for key in ("alpha=0.5", "temperature=4.0", "teacher.seed=0", "dataset.name=digits"):
        assert key in proc.stdout
    assert imported == []


def test_version_names_kd_runner_and_torch_without_importing_it(tmp_path):
    proc, _, imported = run_script("kd-run", "--version", cwd=tmp_path)
    assert proc.returncode == 0
    assert f"kd-runner {kd_runner.__version__}" in proc.stdout
    assert f"torch {importlib.metadata.version('torch')}" in proc.stdout
    assert imported == []


@pytest.mark.parametrize("flag", ["--shell-completion", "-sc"])
def test_shell_completion_without_a_command_is_one_line(flag, tmp_path):
    proc, errors, imported = run_script("kd-run", flag, cwd=tmp_path)
    assert proc.returncode == 2
    assert len(errors) == 1 and "install=bash" in errors[0]
    assert imported == []


def test_shell_completion_install_still_prints_hydras_script(tmp_path):
    proc, _, imported = run_script("kd-run", "--shell-completion", "install=bash", cwd=tmp_path)
    assert proc.returncode == 0 and "complete" in proc.stdout
    assert imported == []


def test_aggregate_and_report_read_a_sweep_without_torch(tmp_path):
    sweep = tmp_path / "sweep"
    grid_sweep(sweep, {(0.5, 4.0): [0.8, 0.82], (1.0, 4.0): [0.7, 0.72]})
    proc, _, imported = run_script("kd-aggregate", str(sweep), cwd=tmp_path)
    assert proc.returncode == 0 and (sweep / "summary.csv").is_file(), proc.stderr
    assert imported == []
    proc, _, imported = run_script("kd-report", str(sweep), cwd=tmp_path)
    assert proc.returncode == 0 and "written to" in proc.stdout, proc.stderr
    assert "torch" not in imported and "torchvision" not in imported


def test_every_registered_builder_exists():
    for path in [*names.NETWORKS.values(), *names.DATASETS.values()]:
        assert callable(resolve_name(path)), path
    assert tuple(torchvision_nets.FAMILIES) == names.PRETRAINED_FAMILIES
    assert tuple(vision.FILE_DATASETS) == names.DOWNLOADABLE
