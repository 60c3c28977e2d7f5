"""Optuna searches for real on the smoke config (`hparams_search=alpha_temperature`): trials of two seeds
each, an interrupted search resumed to its n_trials, the study read back with Optuna's own reader; and the
checks of jobs a sweeper picks as it runs."""

from __future__ import annotations

import json
import signal
import statistics
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import kd_run, start_kd_run, usage_error_line
from PIL import Image

from kd_runner.sweep import search

optuna = pytest.importorskip("optuna")
pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

SEARCH = (
    "hparams_search=alpha_temperature",
    "experiment=smoke",
    "seeds_per_trial=2",
    "hydra.sweeper.n_trials=2",
    "hydra.sweep.dir=search",
)


def trial_dirs(sweep: Path) -> list[Path]:
    return sorted(hydra.parent for hydra in sweep.glob("*/.hydra"))


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> tuple[Path, int]:
    """A 2-trial search stopped by Ctrl-C once its second trial started, then run again with the same command."""
    cwd = tmp_path_factory.mktemp("search")
    proc = start_kd_run(*SEARCH, cwd=cwd)
    deadline = time.monotonic() + 300
    while len(trial_dirs(cwd / "search")) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, out + err
    kd_run(*SEARCH, cwd=cwd)
    return cwd / "search"


def seed_values(sweep: Path) -> dict[tuple, list[float]]:
    """student_acc of every completed run, by (alpha, temperature), from the runs' result.json."""
    values = {}
    for path in sweep.glob("*/seed_*/result.json"):
        record = json.loads(path.read_text())
        if record["status"] == "completed":
            cfg = record["config"]
            values.setdefault((cfg["alpha"], cfg["temperature"]), []).append(record["metrics"]["student_acc"])
    return values


def test_a_resumed_search_completes_n_trials_of_two_seeds_each(resumed):
    sweep = resumed
    study = optuna.load_study(study_name=search.STUDY_NAME, storage=search.storage_url(sweep))
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    interrupted = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(complete) == 2 and len(interrupted) == 1
    # the interrupted trial's values ran again first, in the same trial directory
    assert interrupted[0].params in [t.params for t in complete] and len(trial_dirs(sweep)) == 2
    values = seed_values(sweep)
    for trial in complete:
        accs = values[trial.params["alpha"], trial.params["temperature"]]
        assert len(accs) == 2 and trial.value == pytest.approx(statistics.mean(accs))
    runs = pd.read_csv(sweep / "runs.csv")
    assert len(runs) == 4 and (runs["status"] == "completed").all()  # no "not started": nothing was planned
    assert sorted(runs["seed"]) == [0, 0, 1, 1]


def test_the_search_writes_its_trials_best_params_and_optunas_plots(resumed):
    sweep = resumed
    study = optuna.load_study(study_name=search.STUDY_NAME, storage=search.storage_url(sweep))
    trials = pd.read_csv(sweep / "trials.csv")
    assert trials["number"].tolist() == [t.number for t in study.trials]
    assert trials["state"].tolist() == [t.state.name for t in study.trials]
    best = json.loads((sweep / "best_params.json").read_text())
    assert best == {"trial": study.best_trial.number, "value": study.best_value, "params": study.best_params}
    for stem in ("optimization_history", "slice"):  # Optuna's own plots, not one line per value
        with Image.open(sweep / f"{stem}.png") as image:
            assert image.format == "PNG"
            image.verify()
    assert not (sweep / "curves.png").exists() and not (sweep / "final_accuracy.png").exists()


def test_a_search_job_with_a_bad_value_stops_with_one_line_and_leaves_no_directory(tmp_path):
    proc = kd_run(*SEARCH, "alpha=interval(1.5,2)", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0].startswith("kd-run: error: alpha="), proc.stderr
    assert "Traceback" not in proc.stderr and trial_dirs(tmp_path / "search") == []


def test_a_search_must_minimize_a_loss(capsys):
    err = usage_error_line([*SEARCH, "optimize_metric=student_loss"], capsys)
    assert "hydra.sweeper.direction=minimize" in err


def test_the_basic_sweeper_refuses_intervals(capsys):
    err = usage_error_line(["-m", "experiment=smoke", "alpha=interval(0,1)"], capsys)
    assert "alpha=interval(0,1)" in err and "hparams_search" in err


@pytest.mark.parametrize("seed", ["seed=0,1", "seed=choice(0,1)", '++hydra.sweeper.params.seed="choice(0,1)"'])
def test_a_search_never_tunes_the_seed(seed, tmp_path, monkeypatch, capsys):
    """Optuna would take a swept seed as a hyperparameter and crown the luckiest seed: one line, nothing run."""
    monkeypatch.chdir(tmp_path)
    err = usage_error_line([*SEARCH, seed, "hydra.sweep.dir=search"], capsys)
    assert "is not allowed in a search" in err and "seeds_per_trial" in err
    assert not (tmp_path / "search").exists()


def test_a_search_into_a_directory_holding_another_searchs_study_is_refused(tmp_path, monkeypatch, capsys):
    """The sweep directory records what its study searches (search.json); another search into it would count
    the old trials toward its n_trials and its best: one line, no trial run."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "search").mkdir()
    other = {"overrides": ["hparams_search=alpha_temperature", "student.lr=0.01"], "params": {}}
    (tmp_path / "search" / "search.json").write_text(json.dumps({**other, "direction": "maximize"}))
    err = usage_error_line([*SEARCH, "hydra.sweep.dir=search"], capsys)
    assert "holds the study of another search (hparams_search=alpha_temperature student.lr=0.01)" in err
    assert trial_dirs(tmp_path / "search") == [] and not (tmp_path / "search" / "optuna.db").exists()
