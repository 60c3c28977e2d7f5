"""`hydra.sweeper.together=k`: a sweep's students trained at once are the students of its jobs run alone
(float32, within kd_runner.run.together.TOLERANCE), record the same, and resume alone exactly after a
SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import compose_config, kd_run, start_kd_run, usage_error_line, wait_for_file

from kd_runner import run as run_module
from kd_runner.cli.kd_run import main as kd_run_main
from kd_runner.errors import RunInterrupted
from kd_runner.run.together import TOLERANCE, plan_groups, run_together
from kd_runner.runtime.shared import Shared
from kd_runner.store import rundir

COMMON = ["experiment=smoke", "cache_dir=cache", "threads=1"]
JOBS = [("0", "0"), ("0", "1"), ("0.5", "0"), ("0.5", "1")]  # Hydra's order for alpha=0,0.5 seed=0,1


def _weights(run_dir: Path, name: str = "student.pt") -> dict:
    return torch.load(run_dir / name, weights_only=True)


def _assert_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=TOLERANCE, rtol=0)


def _assert_same_record(together: dict, alone: dict) -> None:
    assert together["status"] == alone["status"] == "completed"
    assert together.keys() == alone.keys()
    assert together["metrics"] == pytest.approx(alone["metrics"], abs=TOLERANCE)
    assert together["config_digest"] == alone["config_digest"]


def test_a_together_sweep_equals_the_sequential_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    sweep = ["-m", *COMMON, "student.epochs=1", "alpha=0,0.5", "seed=0,1"]
    kd_run_main([*sweep, "hydra.sweep.dir=apart"])
    kd_run_main([*sweep, "hydra.sweep.dir=together", "hydra.sweeper.together=3"])
    out = capsys.readouterr().out
    assert "kd-run: together: job(s) 3 train alone: no other job of the sweep shares" in out  # 4 jobs, groups of 3
    for num in range(len(JOBS)):
        apart, together = tmp_path / "apart" / str(num), tmp_path / "together" / str(num)
        _assert_close(_weights(together), _weights(apart))
        _assert_close(_weights(together, "student_best.pt"), _weights(apart, "student_best.pt"))
        _assert_same_record(
            json.loads((together / "result.json").read_text()), json.loads((apart / "result.json").read_text())
        )
        assert list(pd.read_csv(together / "metrics.csv").columns) == list(pd.read_csv(apart / "metrics.csv").columns)
        assert ("3 students at once" in (together / "kd-run.log").read_text()) == (num < 3)
    tables = [pd.read_csv(tmp_path / where / "summary.csv") for where in ("apart", "together")]
    pd.testing.assert_frame_equal(*tables, atol=TOLERANCE, check_exact=False)


def test_groups_are_runs_that_differ_only_in_scalars(tmp_path):
    cfgs = [
        compose_config(*COMMON, "alpha=0"),
        compose_config(*COMMON, "alpha=0.5", "temperature=2", "seed=3"),
        compose_config(*COMMON, "student=cnn"),  # another network
        compose_config(*COMMON, "distill=fitnet"),  # a feature method
        compose_config(*COMMON, "seed=1"),
        compose_config(*COMMON, "seed=2"),
    ]
    run_dirs = [tmp_path / str(i) for i in range(len(cfgs))]
    (run_dirs[5]).mkdir()
    (run_dirs[5] / "student-checkpoint.pt").write_bytes(b"")  # it resumes alone
    groups, alone = plan_groups(cfgs, run_dirs, 2, {4: "finished before (skipped)"})
    assert groups == [[0, 1], [2], [3], [4], [5]]
    assert alone[2].startswith("no other job")
    assert alone[3] == "distill=fitnet reads features (hooks)"
    assert alone[4] == "finished before (skipped)"
    assert alone[5] == "it resumes its own checkpoint"
    groups, _ = plan_groups(cfgs[:2] + cfgs[4:5], run_dirs[:3], 2, {})
    assert groups == [[0, 1], [2]]  # at most k together


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_a_bad_together_is_one_line(value, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = usage_error_line(["-m", *COMMON, "seed=0,1", f"hydra.sweeper.together={value}"], capsys)
    assert "hydra.sweeper.together" in err
    assert not (tmp_path / "multirun").exists() and not (tmp_path / "outputs" / "sweeps").exists()


def test_an_interrupted_group_leaves_checkpoints_each_job_resumes_alone_exactly(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="kd_runner.train.checkpoint")
    cfgs = [compose_config(*COMMON, f"alpha={alpha}", f"seed={seed}") for alpha, seed in JOBS]
    dirs = [tmp_path / f"together{i}" for i in range(len(cfgs))]
    calls = []

    def stop() -> str | None:  # SIGTERM at the 7th batch of the students' second epoch
        metrics = dirs[0] / "metrics.csv"
        if metrics.exists() and "\nstudent," in metrics.read_text():  # the first student epoch recorded
            calls.append(1)
        return "SIGTERM" if len(calls) > 6 else None

    with pytest.raises(RunInterrupted):
        run_together(cfgs, dirs, [[]] * len(cfgs), Shared(), stop)
    for i, (cfg, run_dir) in enumerate(zip(cfgs, dirs)):
        record = json.loads((run_dir / "result.json").read_text())
        assert record["status"] == "interrupted" and record["signal"] == "SIGTERM"
        assert (run_dir / "student-checkpoint.pt").exists()
        caplog.clear()
        resumed = run_module.run(cfg, run_dir, stop=lambda: None)
        assert "student: resuming from" in caplog.text and "epoch 2 (after 6 batches)" in caplog.text
        alone = run_module.run(cfg, tmp_path / f"alone{i}", stop=lambda: None)
        _assert_same_record(resumed, alone)
        _assert_close(_weights(run_dir), _weights(tmp_path / f"alone{i}"))
        assert not (run_dir / "student-checkpoint.pt").exists()


@pytest.mark.slow  # two kd-run processes; the same path without them: the test above
def test_a_together_sweep_stopped_by_sigterm_resumes_each_job_alone(tmp_path):
    sweep = ("-m", *COMMON, "student.epochs=4", "alpha=0,0.5,1", "hydra.sweep.dir=sweep", "checkpoint_every_s=0")
    proc = start_kd_run(*sweep, "hydra.sweeper.together=3", cwd=tmp_path)
    wait_for_file(rundir.student_checkpoint(tmp_path / "sweep" / "2"), proc)  # after a student epoch, together
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert err.startswith("kd-run: interrupted by SIGTERM: stopped in the student stage")
    for num in range(3):
        record = json.loads((tmp_path / "sweep" / str(num) / "result.json").read_text())
        assert record["status"] == "interrupted"
        assert rundir.student_checkpoint(tmp_path / "sweep" / str(num)).exists()

    out = kd_run(*sweep, "hydra.sweeper.together=3", cwd=tmp_path).stdout
    assert "kd-run: together: job(s) 0, 1, 2 train alone: it resumes its own checkpoint" in out
    for num in range(3):
        assert json.loads((tmp_path / "sweep" / str(num) / "result.json").read_text())["status"] == "completed"
        assert "student: resuming from" in (tmp_path / "sweep" / str(num) / "kd-run.log").read_text()
