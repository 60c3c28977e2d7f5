"""`deterministic=true`: reproducible kernels switched on (and off again) process-wide, recorded in
result.json, and harmless on a CPU."""

from __future__ import annotations

import os

import torch
from helpers import kd_run, read_run

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


def test_a_deterministic_cpu_run_completes_and_records_it(tmp_path):
    kd_run(
        "experiment=smoke", "deterministic=true", "hydra.run.dir=run", f"cache_dir={tmp_path / 'cache'}", cwd=tmp_path
    )
    result, _ = read_run(tmp_path / "run")
    assert result["status"] == "completed"
    assert result["compute"]["deterministic"] is True and result["config"]["deterministic"] is True
