"""Use what a run made: kd-eval on a run's saved students, kd_runner.load_student in Python."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from helpers import kd_run, read_run

import kd_runner
from kd_runner.cli import eval as eval_cli
from kd_runner.config import load_config
from kd_runner.data import build_dataset
from kd_runner.errors import RunInterrupted
from kd_runner.run import results
from kd_runner.store.files import write_json
from kd_runner.train.metrics import accuracy

EXTENDING = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


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


def final_metrics(record: dict, written: dict) -> dict:
    return {k: v for k, v in record["metrics"].items() if k in written["metrics"]}


def docs_example(folder: Path, monkeypatch) -> None:
    """docs/extending.md's complete example (each code block that starts with `# mypkg/...` or `# myconf/...`)
    written into `folder`, its package importable here and in kd-run."""
    for block in re.findall(r"```(?:python|yaml)\n(.*?)```", EXTENDING.read_text(), re.S):
        first, _, body = block.partition("\n")
        if first.startswith(("# mypkg/", "# myconf/")):
            (folder / first[2:]).parent.mkdir(parents=True, exist_ok=True)
            (folder / first[2:]).write_text(body)
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")])))
    for name in [m for m in sys.modules if m == "mypkg" or m.startswith("mypkg.")]:  # another test's package
        monkeypatch.delitem(sys.modules, name)


def test_a_run_of_the_docs_user_models_from_a_config_dir_loads_back(tmp_path, monkeypatch, capsys):
    """docs/extending.md's run (`--config-dir myconf`, a student with a LazyLinear): kd-eval rebuilds it from
    its saved config and reproduces its final metrics; load_student gives its accuracy; a group option of
    the config dir replaces the dataset node."""
    docs_example(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)
    args = ["--config-dir", "myconf", "experiment=smoke", "dataset=blobs", "teacher=tiny", "student=mlp16"]
    kd_run(*args, "hydra.run.dir=run", cwd=tmp_path)
    record, _ = read_run(tmp_path / "run")
    code, _, err = kd_eval(["run"], capsys)
    assert code == 0, err
    written = json.loads((tmp_path / "run" / "eval" / "student-blobs.json").read_text())
    assert written["teacher"] is True and written["metrics"] == final_metrics(record, written)
    val = build_dataset(load_config(record["config"]).dataset).val
    with torch.no_grad():
        logits = kd_runner.load_student(tmp_path / "run")(val.images)
    assert accuracy(logits, val.labels) == pytest.approx(record["metrics"]["student_acc"], abs=1e-6)
    code, _, err = kd_eval(["--config-dir", "myconf", "run", "dataset=blobs", "dataset.factory.classes=3"], capsys)
    assert code == 0, err


def test_search_trials_and_their_seeds_evaluate_by_their_paths(smoke_run, tmp_path, monkeypatch, capsys):
    """A search trial's seed directories (a path with `=`, no .hydra/) evaluate; the trial itself is named
    as holding runs below it, in one line."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cwd, _ = smoke_run
    monkeypatch.chdir(cwd)  # the smoke run's teacher cache
    search = tmp_path / "search"
    args = ["hparams_search=alpha_temperature", "experiment=smoke", "hydra.sweeper.n_trials=1", "seeds_per_trial=2"]
    kd_run(*args, f"hydra.sweep.dir={search}", cwd=cwd)
    (trial,) = [p for p in search.iterdir() if p.is_dir() and "=" in p.name]
    record, _ = read_run(trial / "seed_1")
    code, _, err = kd_eval([str(trial / "seed_1")], capsys)
    assert code == 0, err
    written = json.loads((trial / "seed_1" / "eval" / "student-digits.json").read_text())
    assert written["metrics"] == final_metrics(record, written)
    code, out, err = kd_eval([str(trial)], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"{trial} holds no run of its own but 2 in its subdirectories (e.g. {trial / 'seed_0'})" in err


def test_a_reused_job_evaluates_the_student_of_the_job_it_reused(smoke_run, tmp_path, monkeypatch, capsys):
    """alpha=1 jobs that differ only in T: the second reuses the first's results and has no student.pt of its
    own; kd-eval evaluates the first's student (also once the sweep has moved) and says so."""
    cwd, _ = smoke_run
    monkeypatch.chdir(cwd)
    kd_run("-m", "experiment=smoke", "alpha=1", "temperature=2,4", f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=cwd)
    sweep = shutil.move(tmp_path / "sweep", tmp_path / "moved")
    assert "reused_from" in read_run(sweep / "1")[0] and not (sweep / "1" / "student.pt").exists()
    code, out, err = kd_eval([str(sweep / "1")], capsys)
    assert code == 0, err
    assert f"{sweep / '0' / 'student.pt'} ({sweep / '1'} reused this run's results)" in out
    written = json.loads((sweep / "1" / "eval" / "student-digits.json").read_text())
    assert written["reused_from"] == str(sweep / "0")
    assert written["metrics"] == final_metrics(read_run(sweep / "0")[0], written)
    assert kd_runner.load_student(sweep / "1").model.state_dict().keys()
    shutil.rmtree(sweep / "0")
    code, _, err = kd_eval([str(sweep / "1")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{sweep / '1'} reused the results of " in err and "evaluate a job that trained its student" in err


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (RunInterrupted("student", 1, 3), "status interrupted: run its kd-run command again to resume it"),
        (ValueError("boom"), "status failed: ValueError: boom"),
    ],
)
def test_an_unfinished_run_is_named_by_its_status_not_as_missing(run_copy, capsys, error, status):
    record, _ = read_run(run_copy)
    identity = {k: record[k] for k in ("config", "config_digest", "result_key", "overrides")}
    write_json(run_copy / "result.json", results.failure_record(identity, error))
    (run_copy / "student.pt").unlink()  # an unfinished run has none
    code, out, err = kd_eval([str(run_copy)], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"{run_copy} holds no completed kd-run run ({status})" in err and "no such run" not in err


def test_kd_eval_applies_overrides_to_the_saved_config_and_refuses_other_keys(run_copy, capsys):
    code, out, err = kd_eval([str(run_copy), "experiment=smoke"], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "experiment=smoke is not allowed: kd-eval evaluates the run's saved config" in err
    code, out, err = kd_eval([str(run_copy), "dataset.num_classes=ten"], capsys)
    assert code == 2 and "dataset.num_classes: Value 'ten' of type 'str' could not be converted to Integer" in err
    assert not (run_copy / "eval").exists()


def test_a_read_only_run_directory_is_one_line_and_out_writes_elsewhere(run_copy, tmp_path, monkeypatch, capsys):
    real_access = os.access  # as on a read-only file system (the tests may run as root, whom modes do not stop)
    monkeypatch.setattr(os, "access", lambda p, mode: real_access(p, mode) and not str(p).startswith(str(run_copy)))
    code, out, err = kd_eval([str(run_copy)], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert f"--out='{run_copy / 'eval'}' cannot be written: {run_copy} is not writable" in err
    assert not (run_copy / "eval").exists()
    code, _, err = kd_eval(["--out", str(tmp_path / "elsewhere"), str(run_copy)], capsys)
    assert code == 0, err
    assert (tmp_path / "elsewhere" / "student-digits.json").is_file()


@pytest.fixture
def own_signal_handlers():
    """kd-eval installs its handlers in this process: the test's are put back afterwards."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_kd_eval_is_one_line_exit_75_and_nothing_written(
    run_copy, monkeypatch, capsys, own_signal_handlers, sig
):
    evaluate = eval_cli.evaluate

    def signalled(cfg, files):
        os.kill(os.getpid(), sig)  # as SIGTERM or Ctrl-C arrive while the student is evaluated
        return evaluate(cfg, files)

    monkeypatch.setattr(eval_cli, "evaluate", signalled)
    code, out, err = kd_eval([str(run_copy)], capsys)
    assert code == RunInterrupted.exit_code and out == ""
    assert err.strip() == f"kd-eval: stopped at once by {sig.name}; nothing was written; run the same command again"
    assert not (run_copy / "eval").exists()
