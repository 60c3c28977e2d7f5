"""Hostile cases on the sweep side (issue 21): aggregation that must not pool different computations, search
trial directories, studies and trials that fail; each is a right table or one line (docs/errors.md)."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from helpers import compose_config, kd_run
from omegaconf import open_dict

from kd_runner.cli import compose
from kd_runner.config import user_code_digests
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
