"""Each baseline once: alpha=1 jobs that differ only in keys they ignore (temperature, soft loss) are
trained once per seed and reused by the others, recorded as such; never across data, recipe or seed."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from helpers import compose_config, kd_run, scipy_statistics

from kd_runner.config import result_key

SMOKE = "experiment=smoke"


def test_the_result_key_ignores_only_what_alpha1_ignores():
    base = result_key(compose_config(SMOKE, "alpha=1", "temperature=1", "soft_loss=kl"))
    assert result_key(compose_config(SMOKE, "alpha=1", "temperature=8", "soft_loss=mse")) == base
    for differs in ("seed=1", "student.lr=0.01", "dataset=synthetic", "teacher.width=8"):
        assert result_key(compose_config(SMOKE, "alpha=1", "temperature=1", differs)) != base, differs
    distilled = result_key(compose_config(SMOKE, "alpha=0.5", "temperature=1"))
    assert result_key(compose_config(SMOKE, "alpha=0.5", "temperature=8")) != distilled


def job(sweep: Path, num: int) -> dict:
    return json.loads((sweep / str(num) / "result.json").read_text())


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> tuple[Path, str]:
    cwd = tmp_path_factory.mktemp("grid")
    proc = kd_run("-m", SMOKE, "alpha=0,1", "temperature=1,8", "seed=0,1", "hydra.sweep.dir=sweep", cwd=cwd)
    return cwd / "sweep", proc.stdout


def test_a_temperature_by_alpha_sweep_trains_the_alpha1_student_once_per_seed(grid):
    sweep, stdout = grid
    # jobs in Hydra's order: alpha 0 (T 1, 8) then alpha 1 (T 1: jobs 4, 5; T 8: jobs 6, 7), seeds 0, 1 each
    for reuser, owner in ((6, 4), (7, 5)):
        record, first = job(sweep, reuser), job(sweep, owner)
        assert record["reused_from"] == str((sweep / str(owner)).resolve()) and "reused_from" not in first
        assert record["metrics"] == first["metrics"] and record["status"] == "completed"
        assert record["config"]["temperature"] == 8 and first["config"]["temperature"] == 1
        assert not (sweep / str(reuser) / "student.pt").exists() and (sweep / str(owner) / "student.pt").is_file()
    assert all("reused_from" not in job(sweep, num) for num in range(6))  # alpha=0 and the first alpha=1 jobs
    runs = pd.read_csv(sweep / "runs.csv", dtype={"reused_from": str}, keep_default_na=False)
    assert runs["reused_from"].tolist() == ["", "", "", "", "", "", "4", "5"]
    summary = pd.read_csv(sweep / "summary.csv")
    assert summary["n"].tolist() == [2, 2, 2, 2]  # each seed once per point
    assert "reused: 2 job(s)" in stdout


def test_the_statistics_of_a_real_sweep_match_scipy_on_its_result_files(grid):
    sweep, _ = grid
    expected = scipy_statistics([job(sweep, num) for num in range(8)])
    summary = pd.read_csv(sweep / "summary.csv").set_index(["alpha", "temperature"])
    for point, want in expected.items():
        row = summary.loc[point]
        assert (row["student_acc_ci95_low"], row["student_acc_ci95_high"]) == pytest.approx(want["ci"], nan_ok=True)
        if "gain" in want:
            assert row["student_acc_gain_mean"] == pytest.approx(want["gain"])
            assert row["student_acc_gain_n_pairs"] == 2
            assert (row["student_acc_gain_ci95_low"], row["student_acc_gain_ci95_high"]) == pytest.approx(
                want["gain_ci"], nan_ok=True
            )
            assert row["student_acc_gain_p"] == pytest.approx(want["p"], nan_ok=True)


def test_at_alpha_1_the_method_is_ignored_unless_it_trains_the_student_first(tmp_path):
    """alpha=1 computes no term and builds no module of the method, so fitnet's and dist's alpha=1 runs are
    the same computation (one key, identical metrics); a method with an init stage trains the student first."""
    from kd_runner import run

    common = (SMOKE, "student=cnn", "student.width=8", "alpha=1", f"cache_dir={tmp_path / 'cache'}")
    cfgs = {m: compose_config(*common, f"distill={m}") for m in ("dist", "fitnet")}
    assert result_key(cfgs["dist"]) == result_key(cfgs["fitnet"])
    records = {m: run.run(cfg, tmp_path / m) for m, cfg in cfgs.items()}
    assert records["dist"]["metrics"] == records["fitnet"]["metrics"]
    assert not (tmp_path / "fitnet" / "distill.pt").exists()  # no regressors were made at alpha=1
    with_init = compose_config(*common, "distill=ab", "distill.init_epochs=1")
    assert result_key(with_init) != result_key(cfgs["dist"])
