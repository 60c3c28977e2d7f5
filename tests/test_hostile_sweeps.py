"""Hostile cases on the sweep side (issue 21): aggregation that must not pool different computations, search
trial directories, studies and trials that fail; each is a right table or one line (docs/errors.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from helpers import compose_config, kd_run, usage_error_line
from omegaconf import open_dict

from kd_runner.cli import compose, jobs, sweep_tools
from kd_runner.cli import kd_run as kd_run_cli
from kd_runner.config import user_code_digests
from kd_runner.errors import UserError
from kd_runner.run import results
from kd_runner.sweep import aggregate, search


def completed_job(sweep, num: int, alpha: float, seed: int, acc: float, **recorded):
    """A completed job of `alpha` and `seed` whose result.json records `recorded` beside its config."""
    job = sweep / str(num)
    job.mkdir(parents=True)
    config = {"alpha": alpha, "seed": seed, "dataset": {"name": "mine", **recorded.pop("dataset", {})}}
    result = {
        "status": "completed",
        "overrides": [f"alpha={alpha}", f"seed={seed}"],
        "config": config,
        "result_key": f"{sweep.name}-{num}",
        "metrics": {name: acc for name in aggregate.FINAL_METRICS},
        "teacher": {"source": "cache", "cache_key": recorded.pop("teacher_key", "k")},
        **recorded,
    }
    (job / "result.json").write_text(json.dumps(result))
    rows = {"stage": ["student"], "epoch": [1], **{m: [acc] for m in aggregate.CURVE_METRICS}}
    pd.DataFrame(rows).to_csv(job / "metrics.csv", index=False)


@pytest.mark.parametrize(
    "differs",
    [
        {"dataset": {"num_samples": 600}},  # a config of another --config-dir, the dataset's name alike
        {"user_code": {"dataset.factory": "edited"}},  # the user's code
        {"teacher_key": "other data"},  # the data's content (the teacher's cache key covers it)
    ],
    ids=["config", "user code", "data"],
)
def test_two_sweeps_that_differ_beyond_their_swept_keys_are_not_pooled(differs, tmp_path):
    same = {"dataset": {"num_samples": 300}, "user_code": {"dataset.factory": "abc"}}
    other = {**same, **differs}
    for sweep, recorded, accs in [("a", same, (0.5, 0.6)), ("b", other, (0.9, 0.95))]:
        for num, (alpha, acc) in enumerate([(0, accs[0]), (1, accs[1])]):
            completed_job(tmp_path / sweep, num, alpha, 0, acc, **json.loads(json.dumps(recorded)))
    tables = aggregate.aggregate([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert tables.keys == ["alpha", "variant"]
    summary = tables.summary
    assert summary["n"].tolist() == [1, 1, 1, 1]  # four points, never two of n=2
    gains = summary[summary["alpha"] == 0]["student_acc_gain_mean"]  # each paired with its own alpha=1
    assert sorted(gains.round(4)) == [-0.1, -0.05]
    assert "variant: runs of equal swept values that computed something else" in tables.markdown
    assert str(tmp_path / "a") in tables.markdown and str(tmp_path / "b") in tables.markdown


def test_result_json_records_the_digests_of_the_users_code(tmp_path):
    mine = "student.model._target_=kd_runner.models.small_nets.MLP"
    cfg = compose_config("experiment=smoke", "student.name=mine", mine)
    recorded = results.identity(cfg, "cpu", [])["user_code"]
    assert recorded == user_code_digests(cfg) and list(recorded) == ["student.model"]


def test_runs_that_differ_only_in_their_swept_keys_and_seed_share_a_point(tmp_path):
    """One sweep: alpha and seed are swept, everything else alike; a failed run joins its point's variant."""
    sweep = tmp_path / "s"
    for num, (alpha, seed, acc) in enumerate([(0, 0, 0.5), (0, 1, 0.7), (1, 0, 0.4), (1, 1, 0.6)]):
        completed_job(sweep, num, alpha, seed, acc, dataset={"num_samples": 300})
    failed = {"status": "failed", "overrides": ["alpha=0", "seed=2"], "config": {"alpha": 0, "seed": 2}}
    (sweep / "4").mkdir()
    (sweep / "4" / "result.json").write_text(json.dumps(failed))
    tables = aggregate.aggregate([sweep], sweep)
    assert tables.keys == ["alpha"] and "variant" not in tables.runs
    assert tables.summary["n"].tolist() == [2, 2] and tables.summary["n_missing"].tolist() == [1, 0]


@pytest.mark.slow
def test_two_config_dir_sweeps_whose_datasets_share_a_name_are_two_points(tmp_path):
    """Issue 21, case 7: `dataset=mine` names another split of digits in each config dir; kd-aggregate of both
    sweeps gives a point per config dir, each paired with its own alpha=1."""
    for name, split_seed in (("a", 1), ("b", 2)):
        (tmp_path / f"conf_{name}" / "dataset").mkdir(parents=True)
        (tmp_path / f"conf_{name}" / "dataset" / "mine.yaml").write_text(f"name: digits\nsplit_seed: {split_seed}\n")
        args = ["--config-dir", f"conf_{name}", "-m", "experiment=smoke", "dataset=mine", "alpha=0"]
        kd_run(*args, "teacher.epochs=1", "student.epochs=1", f"hydra.sweep.dir=s{name}", "cache_dir=c", cwd=tmp_path)
    records = [json.loads((tmp_path / s / "0" / "result.json").read_text()) for s in ("sa", "sb")]
    assert records[0]["overrides"] == records[1]["overrides"]  # the same command line in both
    tables = aggregate.aggregate([tmp_path / "sa", tmp_path / "sb"], tmp_path / "out")
    assert tables.keys == ["variant"] and tables.summary["n"].tolist() == [1, 1]


@pytest.mark.parametrize(
    "values",
    [
        "alpha=0.5,cache_dir=/abs/path,temperature=4",  # a `/`: the trial directories nested
        ",".join(f"key{i}=value{i}" for i in range(40)),  # over 255 bytes: the file system refused the name
        "dataset.root=données,alpha=0.5",  # not ASCII: longer in bytes than in characters
        "..",
    ],
    ids=["slash", "long", "unicode", "dotdot"],
)
def test_a_trial_directory_name_cannot_nest_or_exceed_the_name_limit(values, tmp_path):
    name = search.trial_dir_name(values)
    assert "/" not in name and len(name.encode()) <= search.NAME_LIMIT and name.strip(".")
    assert search.trial_dir_name(values) == name  # stable: a resumed search finds its trial
    assert search.trial_dir_name(values + "1") != name  # two trials never share a directory
    (tmp_path / name).mkdir()
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_plain_trial_name_is_kept_as_hydra_writes_it():
    assert search.trial_dir_name("alpha=0.25,temperature=4.5") == "alpha=0.25,temperature=4.5"


def test_the_search_preset_names_its_trial_directories_so(tmp_path):
    compose.register()
    with compose.hydra_session() as session:
        call = compose.call_config(session, ["hparams_search=alpha_temperature"], multirun=False)
    with open_dict(call):
        call.hydra.job.override_dirname = "alpha=0.5,cache_dir=/abs/path"
    assert call.hydra.sweep.subdir == search.trial_dir_name("alpha=0.5,cache_dir=/abs/path")


@pytest.mark.slow
def test_a_search_with_a_slash_in_an_override_writes_its_tables(tmp_path):
    """Issue 21, case 13: `cache_dir=/abs/path` nested the trial directories and no table was written."""
    args = ["hparams_search=alpha_temperature", "experiment=smoke", "teacher.epochs=1", "student.epochs=1"]
    kd_run(*args, "hydra.sweeper.n_trials=1", "hydra.sweep.dir=s", f"cache_dir={tmp_path / 'c'}", cwd=tmp_path)
    (trial,) = [p for p in (tmp_path / "s").iterdir() if (p / "result.json").is_file()]
    assert (tmp_path / "s" / "trials.csv").is_file() and (tmp_path / "s" / "best_params.json").is_file()
    assert pd.read_csv(tmp_path / "s" / "runs.csv")["status"].tolist() == ["completed"]


def records(*statuses: str) -> list[dict]:
    return [{"status": s, "metrics": {"student_acc": 0.5 + i / 10}} for i, s in enumerate(statuses)]


def test_a_trial_scores_the_mean_of_its_runs_and_fails_when_one_did_not_complete():
    cfg = compose_config("experiment=smoke")
    assert search.trial_value(cfg, records("completed", "completed")) == pytest.approx(0.55)
    with pytest.raises(search.TrialFailed, match=r"1 of its 2 runs did not complete \(diverged\)"):
        search.trial_value(cfg, records("completed", "diverged"))  # the surviving seed would flatter it


def study_with(sweep, *states: str):
    optuna = pytest.importorskip("optuna")
    study = optuna.create_study(study_name=search.STUDY_NAME, storage=search.storage_url(sweep))
    for state in states:
        trial = study.ask()
        study.tell(trial, 0.5 if state == "COMPLETE" else None, state=getattr(optuna.trial.TrialState, state))
    return study


class SweepThatRaises:
    def __init__(self, exc: Exception):
        self.exc = exc

    def multirun(self, *args):
        raise self.exc


@pytest.mark.parametrize(
    "exc,states,expected",
    [
        (ValueError("No trials are completed yet."), ("FAIL", "FAIL"), "no trial of the search completed"),
        (search.TrialFailed("1 of its 1 runs did not complete (failed)"), ("FAIL",), "the search stopped: a trial"),
    ],
)
def test_a_search_whose_trials_failed_ends_with_one_line(exc, states, expected, tmp_path, capsys):
    study_with(tmp_path, *states)
    kd_run_cli.search_trials(SweepThatRaises(exc), jobs.StartedJobs(), [], str(tmp_path))
    assert expected in capsys.readouterr().err


def test_another_value_error_of_a_search_is_not_taken_for_failed_trials(tmp_path):
    study_with(tmp_path, "COMPLETE")
    with pytest.raises(ValueError, match="a bug"):
        kd_run_cli.search_trials(SweepThatRaises(ValueError("a bug")), jobs.StartedJobs(), [], str(tmp_path))


@pytest.mark.parametrize("given,expected", [([], "hydra.sweeper.max_failure_rate=1.0"), (["rate"], None)])
def test_a_failed_trial_does_not_stop_the_search_unless_the_user_says_so(given, expected, tmp_path):
    overrides = ["hparams_search=alpha_temperature", *(["hydra.sweeper.max_failure_rate=0.5"] if given else [])]
    compose.register()
    with compose.hydra_session() as session:
        call = compose.call_config(session, overrides, multirun=False)
    pinned = [o for o in kd_run_cli.study_overrides(call, str(tmp_path)) if "max_failure_rate" in o]
    assert pinned == ([expected] if expected else [])


@pytest.mark.parametrize("n_trials", ["0", "-3"])
def test_a_search_of_no_trials_is_refused_before_anything_is_written(n_trials, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["hparams_search=alpha_temperature", "experiment=smoke", f"hydra.sweeper.n_trials={n_trials}"]
    err = usage_error_line([*args, "hydra.sweep.dir=s"], capsys)
    assert f"hydra.sweeper.n_trials={n_trials} is not allowed: expected a whole number >= 1" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"\x8f\x00garbage" * 300, b""], ids=["random bytes", "empty"])
def test_a_garbage_study_is_one_line_for_kd_run_and_kd_aggregate(content, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    completed_job(tmp_path / "s", 0, 0.5, 0, 0.7)
    (tmp_path / "s" / search.STUDY_DB).write_bytes(content)
    with pytest.raises(SystemExit) as exc:
        sweep_tools.aggregate_main(["s"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kd-aggregate: error: s/optuna.db holds no Optuna study 'kd-search'") and "\n" not in err
    with pytest.raises(UserError, match="optuna.db holds no Optuna study 'kd-search'.*delete it"):
        search.resume("s", 3)


@pytest.mark.slow
def test_a_search_goes_on_past_diverged_trials_and_records_them_as_fail(tmp_path):
    optuna = pytest.importorskip("optuna")
    args = ["hparams_search=alpha_temperature", "experiment=smoke", "teacher.epochs=1", "student.epochs=1"]
    proc = kd_run(*args, "student.lr=1e30", "hydra.sweeper.n_trials=2", "hydra.sweep.dir=s", cwd=tmp_path, check=False)
    assert proc.returncode == 3 and "Traceback" not in proc.stderr
    assert "no trial of the search completed" in proc.stderr
    study = optuna.load_study(study_name=search.STUDY_NAME, storage=search.storage_url(tmp_path / "s"))
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert pd.read_csv(tmp_path / "s" / "runs.csv")["status"].tolist() == ["diverged", "diverged"]


def read_only(monkeypatch, folder):
    """`folder` as a read-only file system shows it (the tests may run as root, whom permissions do not stop)."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: real(p, mode) and not (mode & os.W_OK and Path(p) == folder))


def test_kd_aggregate_and_kd_report_on_a_read_only_sweep_are_one_line(tmp_path, monkeypatch, capsys):
    sweep = tmp_path / "s"
    completed_job(sweep, 0, 0.5, 0, 0.7)
    sweep_tools.aggregate_main([str(sweep)])
    capsys.readouterr()
    read_only(monkeypatch, sweep)
    for main, prog in [(sweep_tools.aggregate_main, "kd-aggregate"), (sweep_tools.report_main, "kd-report")]:
        with pytest.raises(SystemExit) as exc:
            main([str(sweep)])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"{prog}: error: DIR={str(sweep)!r} cannot be written: ") and "\n" not in err
    sweep_tools.aggregate_main([str(sweep), "--out", str(tmp_path / "elsewhere")])  # the way out it names
    assert (tmp_path / "elsewhere" / "summary.csv").is_file()


SIGNALLED = """
import os, signal, sys
from kd_runner.sweep import report

real, sig = report.write_plots, getattr(signal, sys.argv[1])
def write_plots(*args):
    os.kill(os.getpid(), sig)  # while kd-aggregate writes its plots
    return real(*args)
report.write_plots = write_plots
sys.argv = [sys.argv[2], *sys.argv[3:]]
from kd_runner.cli import aggregate_script, report_script
(aggregate_script if sys.argv[0] == "kd-aggregate" else report_script)()
"""


@pytest.mark.parametrize("prog", ["kd-aggregate", "kd-report"])
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_in_kd_aggregate_or_kd_report_is_one_line_and_leaves_no_half_file(prog, sig, tmp_path):
    sweep = tmp_path / "s"
    completed_job(sweep, 0, 0.5, 0, 0.7)
    aggregate.aggregate([sweep], sweep)  # kd-report draws from the tables
    before = sorted(p.name for p in sweep.iterdir())
    args = [sys.executable, "-c", SIGNALLED, sig, prog, str(sweep)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 75, proc.stderr
    assert proc.stderr.strip().startswith(f"{prog}: stopped at once by {sig}; run the same command again to ")
    assert sorted(p.name for p in sweep.iterdir()) == before  # no temporary file, no plot half-written


@pytest.mark.parametrize(
    "field,value,reason",
    [
        ("overrides", None, "result.json's overrides is a NoneType, not a list"),
        ("overrides", "alpha=0.5", "result.json's overrides is a str, not a list"),
        ("overrides", [1], "result.json's overrides are not all text"),
        ("config", [1, 2], "result.json's config is a list, not a dict"),
        ("metrics", [1, 2], "result.json's metrics is a list, not a dict"),
        ("teacher", "cache", "result.json's teacher is a str, not a dict"),
        ("reused_from", 3, "result.json's reused_from is a int, not a str"),
        ("student_acc", None, "has student_acc=None, not a finite number"),  # counted in n, missing from the mean
        ("student_acc", "high", "has student_acc='high', not a finite number"),
        ("student_acc", float("nan"), "has student_acc=nan, not a finite number"),
    ],
)
def test_a_result_json_edited_into_other_types_is_a_damaged_job(field, value, reason, tmp_path):
    sweep = tmp_path / "s"
    completed_job(sweep, 0, 0.5, 0, 0.7)
    completed_job(sweep, 1, 0.5, 1, 0.9)
    path = sweep / "0" / "result.json"
    result = json.loads(path.read_text())
    (result["metrics"] if field == "student_acc" else result)[field] = value
    path.write_text(json.dumps(result))
    tables = aggregate.aggregate([sweep], sweep)
    assert tables.runs["status"].tolist() == ["damaged", "completed"] and reason in tables.runs["error"][0]
    assert tables.summary["n"].sum() == 1 and tables.summary["student_acc_mean"].dropna().tolist() == [0.9]


@pytest.mark.parametrize("plan", ["{not json", '{"jobs": 3}', "[1, 2]", '{"jobs": [[1]]}'])
def test_a_plan_edited_from_outside_is_one_line(plan, tmp_path):
    completed_job(tmp_path / "s", 0, 0.5, 0, 0.7)
    (tmp_path / "s" / aggregate.PLAN).write_text(plan)
    with pytest.raises(UserError, match=r"sweep.json is not a plan kd-run wrote \(changed from outside\): delete it"):
        aggregate.aggregate([tmp_path / "s"], tmp_path / "s")


def test_a_folder_named_seed_something_in_a_trial_is_not_a_run(tmp_path):
    completed_job(tmp_path / "s" / "trial", "seed_1", 0.5, 1, 0.7)
    completed_job(tmp_path / "s" / "trial", "seed_x", 0.5, 2, 0.9)  # not a seed a search writes
    tables = aggregate.aggregate([tmp_path / "s"], tmp_path / "s")
    assert tables.runs["job"].tolist() == ["trial/seed_1"]


@pytest.mark.parametrize("content", ["{bad", "[1]", '{"params": {}}'])
def test_a_search_json_edited_from_outside_is_one_line(content, tmp_path):
    (tmp_path / search.SEARCH).write_text(content)
    with pytest.raises(UserError, match=r"search.json is not what kd-run wrote \(changed from outside\)"):
        search.claim(tmp_path, {"overrides": ["alpha=0.5"]})
