"""Real multiruns of the smoke config (2 alphas x 2 seeds) through the `kd-run` script: tables, plots,
one teacher per sweep (also with parallel jobs), failure handling, presets and re-aggregation."""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from helpers import kd_run, planned_jobs, usage_error_line
from PIL import Image

from kd_runner.cli import sweep_tools
from kd_runner.cli.kd_run import main as kd_run_main
from kd_runner.names import METRIC_NAMES
from kd_runner.sweep.aggregate import FINAL_METRICS, GAIN_COLUMNS, write_plan

BIN = Path(sys.executable).parent
SWEEP = ("-m", "experiment=smoke", "alpha=0,1", "seed=0,1", "hydra.sweep.dir=sweep", "cache_dir=cache")


def run_tool(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / tool), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def job_results(sweep_dir: Path) -> list[dict]:
    return [
        json.loads((d / "result.json").read_text()) for d in sorted(sweep_dir.glob("[0-9]*"), key=lambda p: int(p.name))
    ]


def assert_valid_png(path: Path) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 300
        image.verify()


def assert_close(actual, expected) -> None:
    if expected is None:
        assert math.isnan(actual)
    else:
        assert math.isclose(actual, expected, rel_tol=1e-9, abs_tol=1e-12), (actual, expected)


@pytest.fixture(scope="module")
def alpha_sweep(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("sweep")
    proc = kd_run(*SWEEP, cwd=cwd)
    return cwd / "sweep", proc


def test_summary_is_the_mean_and_sample_std_of_the_jobs(alpha_sweep):
    sweep, proc = alpha_sweep
    results = job_results(sweep)
    assert [r["status"] for r in results] == ["completed"] * 4
    summary = pd.read_csv(sweep / "summary.csv")
    stats = [f"{m}_{s}" for m in FINAL_METRICS for s in ("mean", "std", "ci95_low", "ci95_high")]
    assert list(summary.columns) == ["alpha", "n", "n_missing", *stats, *GAIN_COLUMNS]
    assert list(summary["alpha"]) == [0, 1] and list(summary["n"]) == [2, 2] and list(summary["n_missing"]) == [0, 0]
    for row in summary.to_dict("records"):
        point = [r["metrics"] for r in results if r["config"]["alpha"] == row["alpha"]]
        assert len(point) == 2
        for name in FINAL_METRICS:
            values = [m[name] for m in point]
            assert_close(row[f"{name}_mean"], statistics.mean(values))
            assert_close(row[f"{name}_std"], statistics.stdev(values))
    baseline = summary.loc[summary.alpha == 1, "student_acc_mean"].item()
    assert_close(  # both points completed both seeds: the paired mean is the difference of the means
        summary.loc[summary.alpha == 0, "student_acc_gain_mean"].item(),
        summary.loc[summary.alpha == 0, "student_acc_mean"].item() - baseline,
    )
    assert math.isnan(summary.loc[summary.alpha == 1, "student_acc_gain_mean"].item())

    markdown = (sweep / "summary.md").read_text()
    assert "| alpha | n | missing | student_acc |" in markdown and markdown in proc.stdout
    first = summary.iloc[0]
    assert f"{first.student_acc_mean:.4f} ± {first.student_acc_std:.4f}" in markdown


def test_runs_csv_has_one_row_per_job(alpha_sweep):
    sweep, _ = alpha_sweep
    runs = pd.read_csv(sweep / "runs.csv")
    results = job_results(sweep)
    assert list(runs["alpha"]) == [0, 0, 1, 1] and list(runs["seed"]) == [0, 1, 0, 1]
    assert list(runs["experiment"]) == ["smoke"] * 4
    assert list(runs["status"]) == ["completed"] * 4
    for row, result in zip(runs.to_dict("records"), results):
        assert Path(row["run_dir"]).name == str(row["job"])
        for name in FINAL_METRICS:
            assert_close(row[name], result["metrics"][name])


def test_curves_are_per_point_and_epoch_means_over_seeds(alpha_sweep):
    sweep, _ = alpha_sweep
    curves = pd.read_csv(sweep / "curves.csv")
    assert len(curves) == 4 and list(curves["epoch"]) == [1, 2, 1, 2] and (curves["n"] == 2).all()
    histories = [pd.read_csv(d / "metrics.csv") for d in sorted(sweep.glob("[0-9]*"), key=lambda p: int(p.name))]
    for row in curves.to_dict("records"):
        jobs = histories[:2] if row["alpha"] == 0 else histories[2:]
        at_epoch = [h[(h.stage == "student") & (h.epoch == row["epoch"])].iloc[0] for h in jobs]
        for name in ("train_loss", *METRIC_NAMES):
            values = [float(r[name]) for r in at_epoch]
            assert_close(row[f"{name}_mean"], statistics.mean(values))
            assert_close(row[f"{name}_std"], statistics.stdev(values))


def test_plots_are_valid_images(alpha_sweep):
    sweep, proc = alpha_sweep
    for name in ("curves.png", "final_accuracy.png"):
        assert_valid_png(sweep / name)
        assert name in proc.stdout


def test_the_teacher_is_fine_tuned_once_per_sweep(alpha_sweep):
    sweep, proc = alpha_sweep
    runs = pd.read_csv(sweep / "runs.csv")
    assert sorted(runs["teacher_source"]) == ["cache", "cache", "cache", "trained"]
    assert runs["teacher_cache_key"].nunique() == 1
    logs = [(d / "kd-run.log").read_text() for d in sorted(sweep.glob("[0-9]*"))]
    assert sum("teacher: fine-tuning" in log for log in logs) == 1
    assert sum("teacher: shared with an earlier job of the sweep" in log for log in logs) == 3  # kept in memory
    assert "teacher: fine-tuned in 1 job(s), loaded from the cache in 3" in proc.stdout


def test_parallel_jobs_with_joblib_share_one_teacher(alpha_sweep, tmp_path):
    sequential, _ = alpha_sweep
    kd_run(*SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=tmp_path)
    launchers = {
        yaml.safe_load((d / ".hydra" / "hydra.yaml").read_text())["hydra"]["launcher"]["_target_"]
        for d in (tmp_path / "sweep").glob("[0-9]*")
    }
    assert launchers == {"hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"}
    runs = pd.read_csv(tmp_path / "sweep" / "runs.csv")
    assert list(runs["status"]) == ["completed"] * 4
    assert sorted(runs["teacher_source"]) == ["cache", "cache", "cache", "trained"]
    # the same jobs as the sequential sweep, with the same results up to thread-count rounding (workers
    # may use fewer threads), which can move a validation sample or two (1/360 each)
    reference = pd.read_csv(sequential / "runs.csv")
    assert list(runs["alpha"]) == list(reference["alpha"]) and list(runs["seed"]) == list(reference["seed"])
    pd.testing.assert_series_equal(runs["student_acc"], reference["student_acc"], atol=2.5 / 360)


def test_a_failing_job_does_not_stop_the_sweep(tmp_path):
    # job 3 (alpha=1, seed=1) cannot write its student.pt: a directory stands where the file goes
    (tmp_path / "sweep" / "3" / "student.pt").mkdir(parents=True)
    proc = kd_run(*SWEEP, cwd=tmp_path, check=False)
    assert proc.returncode == 1
    sweep = tmp_path / "sweep"
    runs = pd.read_csv(sweep / "runs.csv", keep_default_na=False)
    assert list(runs["status"]) == ["completed", "completed", "completed", "failed"]
    assert runs["error"].iloc[3].startswith("IsADirectoryError: ") and runs["error"].iloc[:3].tolist() == [""] * 3
    failed = json.loads((sweep / "3" / "result.json").read_text())
    assert failed["status"] == "failed" and failed["message"] == runs["error"].iloc[3]
    assert "job failed: IsADirectoryError" in (sweep / "3" / "kd-run.log").read_text()
    assert f"failed: {sweep.name}/3: IsADirectoryError" in proc.stdout

    summary = pd.read_csv(sweep / "summary.csv")
    assert list(summary["n"]) == [2, 1] and list(summary["n_missing"]) == [0, 1]
    completed = json.loads((sweep / "2" / "result.json").read_text())["metrics"]
    assert summary["student_acc_mean"].iloc[1] == completed["student_acc"]
    assert math.isnan(summary["student_acc_std"].iloc[1])  # one seed: no sample std, an empty cell
    assert "| 1 | 1 | 1 |" in (sweep / "summary.md").read_text()
    assert (pd.read_csv(sweep / "curves.csv")["n"] == [2, 2, 1, 1]).all()
    assert_valid_png(sweep / "final_accuracy.png")


def test_an_interrupted_sweep_is_still_aggregated(tmp_path):
    """Ctrl-C stops Hydra before its end-of-multirun hook; kd-run aggregates what the jobs left anyway."""
    proc = subprocess.Popen(
        [str(BIN / "kd-run"), *SWEEP], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    started = tmp_path / "sweep" / "1" / ".hydra" / "overrides.yaml"
    deadline = time.monotonic() + 120
    while not started.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    runs = pd.read_csv(tmp_path / "sweep" / "runs.csv", keep_default_na=False)
    # the stopped job checkpointed and marked itself interrupted (a re-run into the sweep resumes it)
    assert list(runs["status"]) == ["completed", "interrupted", "not started", "not started"], out + err
    assert list(runs["alpha"]) == [0, 0, 1, 1] and list(runs["seed"]) == [0, 1, 0, 1]  # from sweep.json
    assert list(runs["run_dir"]) == ["sweep/0", "sweep/1", "", ""]
    summary = pd.read_csv(tmp_path / "sweep" / "summary.csv")
    assert list(summary["alpha"]) == [0, 1] and list(summary["n"]) == [1, 0] and list(summary["n_missing"]) == [1, 2]
    assert "jobs: 1 completed, 1 interrupted, 2 not started" in out


def test_kd_aggregate_on_a_copied_sweep_reproduces_the_tables(alpha_sweep, tmp_path):
    sweep, _ = alpha_sweep
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("*.csv", "*.md", "*.png"))
    for job in copy.glob("[0-9]*"):  # job directories keep their own metrics.csv
        shutil.copy(sweep / job.name / "metrics.csv", job / "metrics.csv")
    proc = run_tool("kd-aggregate", "copy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("summary.csv", "curves.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(copy / name), pd.read_csv(sweep / name))
    assert (copy / "summary.md").read_text() == (sweep / "summary.md").read_text()
    runs = pd.read_csv(copy / "runs.csv")
    pd.testing.assert_frame_equal(runs.drop(columns="run_dir"), pd.read_csv(sweep / "runs.csv").drop(columns="run_dir"))
    assert list(runs["run_dir"]) == [f"copy/{i}" for i in range(4)]
    for name in ("curves.png", "final_accuracy.png"):
        assert_valid_png(copy / name)


def test_kd_aggregate_combines_sweeps_and_reads_interrupted_ones(alpha_sweep, tmp_path, monkeypatch):
    sweep, _ = alpha_sweep
    monkeypatch.chdir(tmp_path)
    shutil.copytree(sweep, tmp_path / "cut")
    killed = tmp_path / "cut" / "3" / "result.json"  # as if the sweep was killed during job 3
    record = json.loads(killed.read_text())
    killed.write_text(json.dumps({key: record[key] for key in ("config", "overrides")} | {"status": "running"}))
    sweep_tools.aggregate_main([str(sweep), "cut", "--out", "both"])
    runs = pd.read_csv(tmp_path / "both" / "runs.csv")
    assert len(runs) == 8 and list(runs["status"]).count("incomplete") == 1
    assert runs["duplicate_of"].notna().sum() == 3  # the copy's completed runs repeat the sweep's: counted once
    summary = pd.read_csv(tmp_path / "both" / "summary.csv")
    assert list(summary["n"]) == [2, 2] and list(summary["n_missing"]) == [0, 1]
    reference = pd.read_csv(sweep / "summary.csv")
    assert_close(summary["student_acc_mean"].iloc[0], reference["student_acc_mean"].iloc[0])


def test_kd_report_redraws_the_plots(alpha_sweep, tmp_path):
    sweep, _ = alpha_sweep
    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy, ignore=shutil.ignore_patterns("*.png"))
    proc = run_tool("kd-report", "copy", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in ("curves.png", "final_accuracy.png"):
        assert_valid_png(copy / name)


@pytest.mark.parametrize(
    "tool,args,message",
    [
        ("aggregate_main", ["nowhere"], "kd-aggregate: error: 'nowhere': no such directory"),
        ("aggregate_main", ["."], "kd-aggregate: error: '.' holds no job directories"),
        ("aggregate_main", ["a", "b"], "kd-aggregate: error: several sweep directories need --out DIR"),
        ("report_main", ["."], "kd-report: error: 'summary.csv': no such file; run kd-aggregate . first"),
    ],
)
def test_sweep_tools_report_bad_input_in_one_line(tool, args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        getattr(sweep_tools, tool)(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(message) and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_alpha_preset_runs_as_a_sweep_and_the_command_line_overrides_it(tmp_path):
    proc = kd_run("sweep=alpha", "experiment=smoke", "alpha=0.25", "seed=3", "hydra.sweep.dir=sweep", cwd=tmp_path)
    runs = pd.read_csv(tmp_path / "sweep" / "runs.csv")
    assert list(runs["alpha"]) == [0.25] and list(runs["seed"]) == [3] and list(runs["sweep"]) == ["alpha"]
    assert list(pd.read_csv(tmp_path / "sweep" / "summary.csv")["n"]) == [1]
    assert "# Sweep over no key (seeds only)" in proc.stdout


@pytest.mark.parametrize(
    "preset,key,values",
    [
        ("alpha", "alpha", {0.0, 0.25, 0.5, 0.75, 1.0}),
        ("temperature", "temperature", {1.0, 2.0, 4.0, 8.0, 16.0}),
    ],
)
def test_presets_expand_to_five_values_times_five_seeds_in_preflight(preset, key, values):
    planned = planned_jobs(f"sweep={preset}")
    assert len(planned) == 25
    assert {(getattr(job.cfg, key), job.cfg.seed) for job in planned} == {(v, s) for v in values for s in range(5)}


def test_preflight_checks_every_job_of_a_preset(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        kd_run_main(["sweep=alpha", "alpha=0,1.5"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.strip() == (  # every failing job named (cli/sweeper.py: problems_line)
        "kd-run: error: 5 of 10 jobs cannot run: alpha=1.5 is not allowed: expected a number in [0, 1] (weight of "
        "the hard-label loss) (jobs 5: alpha=1.5 seed=0; 6: alpha=1.5 seed=1; 7: alpha=1.5 seed=2; 8: alpha=1.5 "
        "seed=3; 9: alpha=1.5 seed=4)"
    )
    assert list(tmp_path.iterdir()) == []


def test_submitit_local_launcher(tmp_path):
    proc = kd_run(
        "-m", "experiment=smoke", "alpha=0,1", "hydra/launcher=submitit_local", "hydra.sweep.dir=sweep", cwd=tmp_path
    )
    runs = pd.read_csv(tmp_path / "sweep" / "runs.csv")
    assert list(runs["status"]) == ["completed"] * 2
    assert sorted(runs["teacher_source"]) == ["cache", "trained"]
    assert (tmp_path / "sweep" / ".submitit").is_dir()  # the jobs went through submitit
    assert "| alpha |" in proc.stdout


@pytest.mark.slow
def test_ray_launcher(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_ray_launcher", reason="needs the ray extra: pip install 'kd-runner[ray]'")
    local = ("+hydra.launcher.ray.init._node_ip_address=127.0.0.1", "+hydra.launcher.ray.init.include_dashboard=false")
    kd_run("-m", "experiment=smoke", "alpha=0,1", "hydra/launcher=ray", *local, "hydra.sweep.dir=sweep", cwd=tmp_path)
    runs = pd.read_csv(tmp_path / "sweep" / "runs.csv")
    assert list(runs["status"]) == ["completed"] * 2
    assert sorted(runs["teacher_source"]) == ["cache", "trained"]  # one teacher, through the cache's lock
    commands = [r["command"][0] for r in job_results(tmp_path / "sweep")]
    assert all(Path(c).name == "default_worker.py" for c in commands), commands  # each job ran in a Ray worker


def test_the_ray_extra_installs_beside_joblib():
    """`pip install 'kd-runner[ray]'` in the project's own environment: hydra-ray-launcher requires
    cloudpickle<3 and joblib 1.6 cloudpickle>=3, so the extra asks for a joblib before 1.6; where the extra
    is installed, pip finds no broken requirement."""
    from packaging.requirements import Requirement

    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    (extra,) = re.findall(r"^ray = \[(.*)\]$", pyproject, re.MULTILINE)
    ray = [Requirement(r) for r in re.findall(r'"([^"]+)"', extra)]
    (joblib,) = [r for r in ray if r.name == "joblib"]
    assert not joblib.specifier.contains("1.6.0") and joblib.specifier.contains("1.5.3")
    if importlib.util.find_spec("hydra_plugins.hydra_ray_launcher") is None:
        pytest.skip("the ray extra is not installed here")
    check = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout


@pytest.mark.parametrize("subdir", ["same", "a${alpha}"])
def test_jobs_that_share_a_directory_are_refused_before_any_runs(subdir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["-m", "experiment=smoke", "alpha=0,1", "seed=0,1", "hydra.sweep.dir=sweep", f"hydra.sweep.subdir={subdir}"]
    err = usage_error_line(args, capsys)
    assert "hydra.sweep.subdir: the jobs 'experiment=smoke alpha=0 seed=0' and" in err and "both write to" in err
    assert list(tmp_path.iterdir()) == []


def test_another_sweep_into_an_existing_sweep_directory_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    first = [f"experiment=smoke alpha={a} seed={s}".split() for a in (0, 1) for s in (0, 1)]
    write_plan(tmp_path / "sweep", first, {})
    err = usage_error_line(["-m", "experiment=smoke", "alpha=0", "seed=0,1", "hydra.sweep.dir=sweep"], capsys)
    assert "hydra.sweep.dir='sweep' holds another sweep (4 jobs, not these 2)" in err
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["sweep.json"]
    planned = planned_jobs("experiment=smoke", "alpha=0,1", "seed=0,1", "hydra.sweep.dir=sweep")
    assert len(planned) == 4  # the very same sweep again: accepted (it resumes)
