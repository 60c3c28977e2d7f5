"""Use what a run made: kd-eval on a run's saved students, kd_runner.load_student in Python."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from helpers import kd_run, read_run

import kd_runner
from kd_runner.cli import eval as eval_cli
from kd_runner.config import load_config
from kd_runner.data import build_dataset
from kd_runner.train.metrics import accuracy


@pytest.fixture
def run_copy(smoke_run, tmp_path, monkeypatch):
    """A copy of the smoke run (kd-eval writes into it), from the smoke run's directory (its teacher cache)."""
    cwd, _ = smoke_run
    monkeypatch.chdir(cwd)
    return shutil.copytree(cwd / "run1", tmp_path / "run1")


def kd_eval(args: list[str], capsys) -> tuple[int, str, str]:
    try:
        eval_cli.main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_kd_eval_reproduces_the_runs_final_metrics_with_its_cached_teacher(run_copy, capsys):
    code, out, err = kd_eval([str(run_copy)], capsys)
    assert code == 0, err
    result, _ = read_run(run_copy)
    written = json.loads((run_copy / "eval" / "student-digits.json").read_text())
    assert written["teacher"] is True and written["samples"] == 360
    assert written["metrics"] == {k: v for k, v in result["metrics"].items() if k != "best_student_acc"}
    assert f"student_acc {result['metrics']['student_acc']:.4f}" in out


def test_kd_eval_of_the_best_student_without_the_teacher_in_the_cache(run_copy, tmp_path, capsys):
    weights = run_copy / "student_best.pt"
    code, _, err = kd_eval([str(weights), f"cache_dir={tmp_path / 'empty'}"], capsys)
    assert code == 0, err
    written = json.loads((run_copy / "eval" / "student_best-digits.json").read_text())
    assert written["teacher"] is False
    assert set(written["metrics"]) == {"student_acc", "student_loss", "student_acc_top5"}
    assert written["metrics"]["student_acc"] == read_run(run_copy)[0]["best"]["student_acc"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["dataset=synthetic", "dataset.num_classes=3"],
            "student_best.pt does not fit student mlp on dataset synthetic",
        ),
        (["dataset=nope"], "dataset='nope' is not allowed: one of: "),
    ],
)
def test_kd_eval_refuses_a_dataset_the_student_does_not_fit_in_one_line(run_copy, capsys, args, message):
    code, out, err = kd_eval([str(run_copy / "student_best.pt"), *args], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("kd-eval: error: ") and message in err
    assert not (run_copy / "eval").exists()


def test_kd_eval_refuses_what_is_not_a_run(tmp_path, capsys):
    code, _, err = kd_eval([str(tmp_path / "missing")], capsys)
    assert code == 2 and "no such run directory or student weights file" in err
    (tmp_path / "student.pt").write_bytes(b"")
    code, _, err = kd_eval([str(tmp_path)], capsys)
    assert code == 2 and "holds no completed kd-run run (no result.json)" in err


def test_load_student_gives_the_trained_student_with_its_normalisation(run_copy):
    result, _ = read_run(run_copy)
    model = kd_runner.load_student(run_copy)
    assert isinstance(model, torch.nn.Module) and not model.training
    data = build_dataset(load_config(result["config"]).dataset)  # raw images, as the dataset gives them
    with torch.no_grad():
        logits = model(data.val.images)
    assert accuracy(logits, data.val.labels) == pytest.approx(result["metrics"]["student_acc"], abs=1e-6)
    best = kd_runner.load_student(run_copy, "student_best.pt")
    assert accuracy(best(data.val.images), data.val.labels) == pytest.approx(result["best"]["student_acc"], abs=1e-6)


@pytest.mark.parametrize("method", ["dist", "dkd", "fitnet"])
def test_kd_eval_reports_the_objective_of_the_runs_method(method, smoke_run, tmp_path, monkeypatch, capsys):
    """The objective is the method's own (dist's relations, dkd at its last epoch's warm-up, fitnet with its
    trained regressors from distill.pt), as in training: kd-eval reproduces every final metric of the run."""
    cwd, _ = smoke_run
    monkeypatch.chdir(cwd)  # the smoke run's teacher cache
    args = ("experiment=smoke", "student=cnn", "student.width=8", "alpha=0.3", f"distill={method}")
    kd_run(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=cwd)
    record, _ = read_run(tmp_path / "run")
    code, _, err = kd_eval([str(tmp_path / "run")], capsys)
    assert code == 0, err
    written = json.loads((tmp_path / "run" / "eval" / "student-digits.json").read_text())
    expected = {k: v for k, v in record["metrics"].items() if k in written["metrics"]}
    assert written["metrics"] == pytest.approx(expected, rel=1e-6) and "objective" in expected


def test_kd_eval_on_another_dataset_normalises_as_the_run_did(run_copy, capsys):
    """Images of another dataset go through the run's normalisation, as load_student's model applies it: both
    give the same accuracy on the same images (the other dataset's own statistics would not)."""
    args = ["dataset=synthetic", "dataset.num_classes=10", "dataset.channels=1", "dataset.image_size=8"]
    code, _, err = kd_eval([str(run_copy), *args], capsys)
    assert code == 0, err
    written = json.loads((run_copy / "eval" / "student-synthetic.json").read_text())
    result, _ = read_run(run_copy)
    other = build_dataset(dataclasses.replace(load_config(result["config"]).dataset, name="synthetic", num_classes=10))
    assert other.mean != tuple(result["data"]["mean"])  # a dataset of other statistics
    with torch.no_grad():
        logits = kd_runner.load_student(run_copy)(other.val.images)
    assert written["metrics"]["student_acc"] == pytest.approx(accuracy(logits, other.val.labels), abs=1e-6)
