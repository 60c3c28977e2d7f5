"""A sweep's preflight checks every job before any is written, and names the problems of all of them at
once: config values, feature layers a network lacks, pretrained weight files that are missing."""

from __future__ import annotations

import os
import urllib.error
from unittest import mock

import pytest
import torch
import torchvision
from helpers import compose_config, usage_error_line

from kd_runner.run import check


def weights_file(name: str) -> str:
    return os.path.basename(torchvision.models.get_model_weights(name).DEFAULT.url)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty torch hub cache, and any download fails as it does without network."""

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_every_failing_job_is_named_in_one_line(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    args = ["-m", "experiment=smoke", "distill=kd,fitnet", "student=mlp,cnn", f"hydra.sweep.dir={sweep}"]
    err = usage_error_line(args, capsys)
    assert err.startswith("kd-run: error: 1 of 4 jobs cannot run: distill.student_layers: ")
    assert err.endswith("(job 2: distill=fitnet student=mlp)")
    assert not sweep.exists()


def test_the_problems_of_different_jobs_are_listed_together(tmp_path, capsys):
    args = [
        "-m",
        "experiment=smoke",
        "alpha=0,2,3",
        "distill=kd,fitnet",
        "student=mlp",
        f"hydra.sweep.dir={tmp_path}/s",
    ]
    err = usage_error_line(args, capsys)
    assert err.startswith("kd-run: error: 5 of 6 jobs cannot run: ")
    assert "alpha=2.0 is not allowed: expected a number in [0, 1]" in err and "(jobs 2: alpha=2 distill=kd; " in err
    assert "alpha=3.0 is not allowed" in err
    assert "distill.student_layers: " in err and "(job 1: alpha=0 distill=fitnet)" in err


def test_every_missing_pretrained_weight_file_is_named(offline, tmp_path, capsys):
    args = ["-m", "experiment=smoke", "teacher=resnet18,resnet34", "teacher.pretrained=true", "alpha=0,1"]
    err = usage_error_line([*args, f"hydra.sweep.dir={tmp_path}/s"], capsys)
    assert err.startswith("kd-run: error: 4 of 4 jobs cannot run: cannot load pretrained weights")  # two problems
    for num, name in ((0, "resnet18"), (2, "resnet34")):
        assert str(offline / weights_file(name)) in err
        assert f"(jobs {num}: teacher={name} alpha=0; {num + 1}: teacher={name} alpha=1)" in err
    assert not (tmp_path / "s").exists()


def test_a_weight_file_in_the_cache_passes_and_each_check_runs_once(offline):
    offline.mkdir(parents=True)
    (offline / weights_file("resnet18")).write_bytes(b"")  # present: not fetched again (loading checks it)
    probes = check.Probes()
    cfg = compose_config(
        "experiment=smoke", "teacher=resnet18", "teacher.pretrained=true", "distill=fitnet", "student=cnn"
    )
    with mock.patch.object(check, "check_layers", wraps=check.check_layers) as layers:
        for seed in (0, 1, 2):
            probes.check(compose_config("experiment=smoke", "distill=fitnet", "student=cnn", f"seed={seed}"))
        probes.check(cfg)
    assert layers.call_count == 2  # the seeds share one probe; another teacher is another


def test_a_problem_of_every_job_is_the_sweeps_one_message(tmp_path, capsys):
    err = usage_error_line(
        ["-m", "experiment=smoke", "student=mlp", "alpha=0,1", "distill=fitnet", f"hydra.sweep.dir={tmp_path}"], capsys
    )
    assert err.startswith("kd-run: error: distill.student_layers: ") and "jobs" not in err
