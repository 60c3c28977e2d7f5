"""A NaN or infinite loss stops the run: one line with a hint, status `diverged`, exit code 3; a sweep goes on."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest

from kd_runner.cli.kd_run import main as kd_run_main
from kd_runner.config import StageConfig
from kd_runner.errors import Diverged
from kd_runner.store import rundir
from kd_runner.train import engine


def run_cli(args, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        kd_run_main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_a_diverging_student_stops_with_a_hint_and_status_diverged(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["experiment=smoke", "student.lr=1e30", "hydra.run.dir=run"]
    code, _, err = run_cli(args, capsys)

    assert code == 3
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("kd-run: diverged: the student stage diverged in epoch 1 (")
    assert "lower the learning rate (student.lr=1e+30)" in err
    record = json.loads((tmp_path / "run" / "result.json").read_text())
    assert (record["status"], record["stage"], record["epoch"]) == ("diverged", "student", 1)
    assert "metrics" not in record  # no numbers that a table could mistake for results
    assert not (tmp_path / "run" / "student.pt").exists()
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")  # the finished epochs only: the teacher's
    assert list(zip(metrics.stage, metrics.epoch)) == [("teacher", 1), ("teacher", 2)]
    assert not rundir.student_checkpoint(tmp_path / "run").exists()

    code, out, err2 = run_cli(args, capsys)  # diverged is final: a re-run reports it again without training
    assert code == 3 and err2 == err and "skipped" in out


def test_a_diverging_teacher_is_not_cached(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["experiment=smoke", "teacher.lr=1e30", "hydra.run.dir=run"], capsys)
    assert code == 3 and "the teacher stage diverged in epoch 1" in err and "teacher.lr=1e+30" in err
    assert json.loads((tmp_path / "run" / "result.json").read_text())["stage"] == "teacher"
    assert not list((tmp_path / "outputs" / "cache" / "teachers").glob("*.json"))  # no entry published


def test_in_a_sweep_the_other_jobs_go_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["-m", "experiment=smoke", "student.lr=1e30,0.05", "hydra.sweep.dir=sweep"], capsys)
    assert code == 3
    assert len(err.strip().splitlines()) == 1 and "sweep/0" in err
    first = json.loads((tmp_path / "sweep" / "0" / "result.json").read_text())
    second = json.loads((tmp_path / "sweep" / "1" / "result.json").read_text())
    assert first["status"] == "diverged" and second["status"] == "completed"
    assert second["metrics"]["student_acc"] > 0.5
    assert "#1 experiment=smoke student.lr=0.05: completed, student_acc " in out
    assert "#0 experiment=smoke student.lr=1e+30: diverged" in out


@pytest.mark.parametrize(
    "stage, recipe, precision, temperature, expected",
    [
        ("student", {"lr": 5.0}, "fp32", 4.0, "lower the learning rate (student.lr=5.0): it is large for"),
        ("teacher", {"lr": 0.5, "optimizer": "adam"}, "fp32", None, "teacher.optimizer=adam (usually at most 0.01)"),
        ("student", {"lr": 0.05}, "fp32", 80.0, "lower the temperature (temperature=80): above the usual 1 to 20"),
        ("student", {"lr": 0.05}, "fp16", 4.0, "precision=fp16 can overflow"),
        ("student", {"lr": 0.05}, "fp32", 4.0, "lower the learning rate (student.lr=0.05) or check the data"),
    ],
)
def test_the_divergence_hint_names_the_likely_cause(stage, recipe, precision, temperature, expected):
    row = {"epoch": 2, "train_loss": math.nan}
    with pytest.raises(Diverged, match=re.escape(expected)):
        engine.check_finite(row, stage, StageConfig(**recipe), precision, temperature)
