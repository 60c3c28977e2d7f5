"""One run across 2 processes with DDP under torchrun (gloo on CPU) against a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from helpers import KD_RUN, compose_config, planned_jobs, read_run, usage_error_line

from kd_runner import run
from kd_runner.runtime.distributed import Shard

# Splitting every batch across processes gives the same gradient up to float rounding; the last batch
# loses the samples that do not split evenly. Measured differences are ~1e-3 relative; allowed:
ACC_TOLERANCE = 0.01  # accuracies and agreement: under 4 of the 360 validation samples
LOSS_TOLERANCE = 0.01  # losses, objective, logit gap, KL: relative


def test_shards_split_every_batch_into_equal_disjoint_parts():
    idx = torch.arange(10)
    parts = [idx[Shard(r, 2).rows(10)] for r in range(2)]
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    odd = [torch.arange(7)[Shard(r, 2).rows(7)] for r in range(2)]
    assert [len(p) for p in odd] == [3, 3]  # one sample of an uneven batch is left out
    assert Shard(0, 2).rows(3) is None  # fewer than 2 per process: dropped (BatchNorm)
    assert Shard().rows(3) == slice(0, 3)


def test_each_process_augments_its_rows_with_the_draws_of_the_whole_batch():
    from kd_runner.data.augment import Augmentation

    aug = Augmentation(crop_padding=2, flip=True)
    images = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    whole = aug(images, torch.Generator().manual_seed(3))
    parts = [
        aug(images[Shard(r, 2).rows(8)], torch.Generator().manual_seed(3), Shard(r, 2).rows(8), 8) for r in range(2)
    ]
    assert torch.equal(torch.cat(parts), whole)


def test_too_small_a_batch_for_the_processes_is_a_usage_error():
    from kd_runner.errors import ConfigError

    with pytest.raises(ConfigError, match="student.batch_size=3 is not allowed: at least 4 with 2 processes"):
        Shard(0, 2).check_batch_size(3, "student.batch_size")
    Shard(0, 2).check_batch_size(4, "student.batch_size")


def test_shards_cover_the_evaluation_set_in_order():
    shares = [Shard(r, 3).eval_indices(10) for r in range(3)]
    assert [len(s) for s in shares] == [4, 4, 4]
    assert torch.cat(shares)[:10].tolist() == list(range(10))  # gather keeps the first n rows
    assert torch.equal(Shard().eval_indices(5), torch.arange(5))


def close(distributed: dict, single: dict) -> None:
    for name, value in single.items():
        if name in ("student_acc", "teacher_acc", "agreement", "best_student_acc"):
            assert abs(distributed[name] - value) <= ACC_TOLERANCE, name
        else:
            assert distributed[name] == pytest.approx(value, rel=LOSS_TOLERANCE), name


def test_two_process_sweep_matches_single_process_runs(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node=2",
        "--no-python",
        KD_RUN,
        "-m",
        "experiment=smoke",
        "alpha=0.5,1",
        "hydra.sweep.dir=sweep",
    ]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # only rank 0 wrote: one sweep directory, one teacher, one set of teacher logits
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs", "sweep"]
    sweep = tmp_path / "sweep"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1"]
    assert (sweep / "summary.csv").is_file() and (sweep / "runs.csv").is_file()  # aggregated once, by rank 0
    assert len(list((tmp_path / "outputs" / "cache" / "teachers").glob("*.pt"))) == 1
    assert len(list((tmp_path / "outputs" / "cache" / "teacher_logits").glob("*.pt"))) == 2
    assert proc.stdout.count(": completed, student_acc ") == 2  # the lines of rank 0's two jobs

    for job, alpha in enumerate((0.5, 1.0)):
        result, metrics = read_run(tmp_path / "sweep" / str(job))
        assert result["config"]["alpha"] == alpha
        assert result["compute"]["processes"] == 2
        assert result["teacher"]["source"] == ("trained" if job == 0 else "cache")
        single = run.run(
            compose_config("experiment=smoke", f"alpha={alpha}", f"cache_dir={tmp_path / 'single'}"),
            tmp_path / f"single{job}",
        )
        assert single["compute"]["processes"] == 1
        assert result["metrics"]["teacher_acc"] == single["metrics"]["teacher_acc"]  # the same teacher, trained once
        close(result["metrics"], single["metrics"])
        assert list(metrics["stage"]) == ["teacher", "teacher", "student", "student"]


def test_checks_under_torchrun_take_the_batch_per_process_and_the_launcher(monkeypatch, tmp_path, capsys):
    from kd_runner.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(["experiment=smoke", "hparams_search=alpha_temperature"], capsys)
    assert "a search is not allowed under torchrun" in err
    err = usage_error_line(["experiment=smoke", "student.batch_size=3"], capsys)
    assert "student.batch_size=3 is not allowed: at least 4 with 2 processes" in err
    with pytest.raises(UserError, match=r"hydra/launcher=JoblibLauncher is not allowed under torchrun"):
        planned_jobs("experiment=smoke", "alpha=0,1", "hydra/launcher=joblib")
    planned = planned_jobs("experiment=smoke", "alpha=0,1")
    assert [job.cfg.alpha for job in planned] == [0.0, 1.0]  # the jobs every process runs, in order
    assert list(tmp_path.iterdir()) == []
