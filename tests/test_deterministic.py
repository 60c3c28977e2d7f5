"""`deterministic=true`: reproducible kernels switched on (and off again) process-wide, recorded in
result.json, and harmless on a CPU."""

from __future__ import annotations

import os

import torch
from helpers import compose_config, read_run
from torch.nn.modules.module import register_module_forward_hook

from kd_runner import run
from kd_runner.runtime.compute import Compute


def test_the_switch_turns_deterministic_algorithms_on_and_off(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    compute = Compute(torch.device("cpu"))
    try:
        compute.configure_backends(deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        compute.configure_backends(deterministic=False)
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def forward_passes_under(overrides: list[str], run_dir) -> tuple[dict, list[bool]]:
    """Run the config in-process; for every module's forward pass of the run, whether torch's
    deterministic algorithms were on."""
    seen = []
    hook = register_module_forward_hook(lambda *_: seen.append(torch.are_deterministic_algorithms_enabled()))
    try:
        record = run.run(compose_config("experiment=smoke", *overrides), run_dir)
    finally:
        hook.remove()
        torch.use_deterministic_algorithms(False)
    return record, seen


def test_a_deterministic_cpu_run_trains_with_deterministic_algorithms_and_records_it(tmp_path):
    _, seen = forward_passes_under(["deterministic=true", f"cache_dir={tmp_path / 'cache'}"], tmp_path / "run")
    assert seen and all(seen)  # both stages, every forward pass
    result, _ = read_run(tmp_path / "run")
    assert result["status"] == "completed" and result["metrics"]["student_acc"] > 0.5  # harmless on a CPU
    assert result["compute"]["deterministic"] is True and result["config"]["deterministic"] is True


def test_a_default_run_switches_deterministic_algorithms_off_and_records_it(tmp_path):
    torch.use_deterministic_algorithms(True)  # left on by an earlier deterministic run in the process
    record, seen = forward_passes_under([f"cache_dir={tmp_path / 'cache'}"], tmp_path / "run")
    assert seen and not any(seen)
    assert record["compute"]["deterministic"] is False
