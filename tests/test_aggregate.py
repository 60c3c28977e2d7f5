"""Aggregation and plots as library calls, on sweep directories laid out as kd-run writes them
(result.json with the job's overrides and config, metrics.csv) with chosen metric values."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from helpers import scipy_statistics
from PIL import Image

from kd_runner.cli import sweep_tools
from kd_runner.errors import UserError
from kd_runner.names import METRIC_NAMES
from kd_runner.sweep import aggregate, report


def make_job(sweep, num: int, overrides: list[str], seed: int, acc: float | None, teacher_acc: float = 0.9):
    """A finished job whose metrics are all derived from `acc` (None: a failed job)."""
    job = sweep / str(num)
    job.mkdir(parents=True)
    identity = {"overrides": overrides, "config": {"seed": seed}}
    if acc is None:
        result = {"status": "failed", "message": "RuntimeError: boom", **identity}
    else:
        metrics = {name: acc for name in METRIC_NAMES} | {"teacher_acc": teacher_acc, "best_student_acc": acc + 0.01}
        teacher = {"source": "cache", "cache_key": "k"}
        result = {"status": "completed", "metrics": metrics, "teacher": teacher, **identity}
        rows = [
            {
                "stage": "student",
                "epoch": e,
                "lr": 0.1,
                "train_loss": 1.0 / e,
                **{name: acc * e / 2 for name in METRIC_NAMES},
            }
            for e in (1, 2)
        ]
        pd.DataFrame([{"stage": "teacher", "epoch": 1, "teacher_acc": teacher_acc}, *rows]).to_csv(
            job / "metrics.csv", index=False
        )
    (job / "result.json").write_text(json.dumps(result))


def grid_sweep(sweep, accs: dict[tuple, list[float]], teacher_acc=0.9):
    """Jobs over alpha x temperature x seeds: accs[(alpha, temperature)] = the accuracy of each seed."""
    num = 0
    for (alpha, temperature), values in accs.items():
        for seed, acc in enumerate(values):
            make_job(
                sweep,
                num,
                ["experiment=smoke", f"alpha={alpha}", f"temperature={temperature}", f"seed={seed}"],
                seed,
                acc,
                teacher_acc,
            )
            num += 1


def test_two_swept_keys_and_the_gain_over_alpha1_at_the_same_temperature(tmp_path):
    accs = {(0, 2): [0.80, 0.84], (0, 4): [0.90, 0.92], (1, 2): [0.70, 0.72], (1, 4): [0.75, 0.75]}
    grid_sweep(tmp_path, accs)
    tables = aggregate.aggregate([tmp_path], tmp_path)
    assert tables.keys == ["alpha", "temperature"]  # experiment=smoke is the same everywhere: not swept
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert list(zip(summary.alpha, summary.temperature)) == [(0, 2), (0, 4), (1, 2), (1, 4)]
    assert list(summary["n"]) == [2, 2, 2, 2]
    assert summary["student_acc_mean"].tolist() == pytest.approx([0.82, 0.91, 0.71, 0.75])
    assert summary["student_acc_std"].tolist() == pytest.approx(
        [0.02**0.5 * 0.2, 0.02**0.5 * 0.1, 0.02**0.5 * 0.1, 0.0]
    )
    assert summary["best_student_acc_mean"].tolist() == pytest.approx([0.83, 0.92, 0.72, 0.76])
    assert summary["student_acc_gain_mean"].tolist()[:2] == pytest.approx([0.11, 0.16])
    assert summary["student_acc_gain_mean"][2:].isna().all()  # the baselines themselves
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert list(runs.columns[:5]) == ["job", "experiment", "alpha", "temperature", "seed"]
    curves = pd.read_csv(tmp_path / "curves.csv")
    assert len(curves) == 8 and (curves["n"] == 2).all()
    first = curves[(curves.alpha == 0) & (curves.temperature == 2) & (curves.epoch == 1)].iloc[0]
    assert first["student_acc_mean"] == pytest.approx(0.41) and first["train_loss_mean"] == pytest.approx(1.0)
    assert first["train_loss_std"] == 0.0


def test_ci_and_paired_gain_against_scipy_from_the_result_files(tmp_path):
    # seed 3 of the distilled point failed: it pairs over seeds 0-2 only; the baseline has 4 seeds
    accs = {(0, 2): [0.80, 0.86, 0.83, None], (1, 2): [0.70, 0.78, 0.71, 0.90], (0, 4): [0.72, 0.70, 0.74, 0.71]}
    grid_sweep(tmp_path, accs)
    results = []
    for job in sorted(tmp_path.iterdir()):
        result = json.loads((job / "result.json").read_text())
        overrides = aggregate._split(result["overrides"])
        config = {"alpha": float(overrides["alpha"]), "temperature": int(overrides["temperature"])}
        results.append(result | {"config": config | {"seed": int(overrides["seed"])}})
    expected = scipy_statistics(results)
    summary = aggregate.aggregate([tmp_path], tmp_path).summary.set_index(["alpha", "temperature"])
    for point, want in expected.items():
        row = summary.loc[point]
        assert (row["student_acc_ci95_low"], row["student_acc_ci95_high"]) == pytest.approx(want["ci"])
        if "gain" in want:
            assert row["student_acc_gain_mean"] == pytest.approx(want["gain"])
            assert (row["student_acc_gain_ci95_low"], row["student_acc_gain_ci95_high"]) == pytest.approx(
                want["gain_ci"]
            )
            assert row["student_acc_gain_p"] == pytest.approx(want["p"])
    assert summary.loc[(0, 2), "student_acc_gain_n_pairs"] == 3
    assert math.isnan(summary.loc[(0, 4), "student_acc_gain_mean"])  # no alpha=1 at T=4: nothing to pair with
    markdown = (tmp_path / "summary.md").read_text()
    low, high = expected[0, 2]["gain_ci"]
    assert f"{expected[0, 2]['gain']:+.4f} [{low:+.4f}, {high:+.4f}] p={expected[0, 2]['p']:.3f} (3 seeds)" in markdown
    assert ("(3 seeds) *" in markdown) == (low > 0 or high < 0)


def test_no_gain_column_without_an_alpha1_point(tmp_path):
    grid_sweep(tmp_path, {(0, 2): [0.8], (0.5, 2): [0.9]})
    summary = aggregate.aggregate([tmp_path], tmp_path).summary
    assert not any(column.startswith(aggregate.GAIN) for column in summary)
    assert summary["student_acc_ci95_low"].isna().all()  # n=1: no CI either
    assert summary["alpha"].tolist() == [0.0, 0.5] and summary["student_acc_std"].isna().all()  # n=1: no std
    markdown = (tmp_path / "summary.md").read_text()
    assert "| 0 | 1 | 0 | 0.8000 | 0.9000 |" in markdown and "| 0.5 | 1 | 0 | 0.9000 | 0.9000 |" in markdown
    assert "0.9000 ±" not in markdown


def test_summary_md_states_the_teacher_and_the_no_distillation_baseline_above_the_table(tmp_path):
    grid_sweep(tmp_path / "a", {(0, 4): [0.80, 0.84], (1, 4): [0.70, 0.72]}, teacher_acc=0.95)
    markdown = aggregate.aggregate([tmp_path / "a"], tmp_path / "a").markdown
    told = markdown.index("- teacher_acc: 0.9500\n- no distillation (alpha=1): student_acc 0.7100 ± 0.0141\n")
    assert told < markdown.index("| alpha |")
    grid_sweep(tmp_path / "t", {(0.5, 2): [0.8], (0.5, 4): [0.9]})  # a temperature sweep: no alpha=1 point
    markdown = aggregate.aggregate([tmp_path / "t"], tmp_path / "t").markdown
    assert "- teacher_acc: 0.9000\n- no distillation (alpha=1): not in this sweep" in markdown


def test_plots_of_a_key_swept_over_null_and_text(tmp_path):
    for num, value in enumerate(("null", "auto", "3.5")):
        make_job(tmp_path, num, [f"transfer.omitted_bias={value}", "seed=0"], 0, 0.8 + 0.01 * num)
    aggregate.aggregate([tmp_path], tmp_path)
    assert report.write_plots(tmp_path) == ["curves.png", "curves.svg", "final_accuracy.png", "final_accuracy.svg"]


def test_categorical_keys_failed_jobs_and_number_parsing(tmp_path):
    num = 0
    for student in ("mlp", "cnn"):
        for lr in ("1e-3", "0.1"):
            for seed in (0, 1):
                failed = student == "cnn" and lr == "0.1" and seed == 1
                make_job(
                    tmp_path,
                    num,
                    [f"student={student}", f"student.lr={lr}", f"seed={seed}"],
                    seed,
                    None if failed else 0.5 + 0.1 * seed,
                )
                num += 1
    tables = aggregate.aggregate([tmp_path], tmp_path)
    assert tables.keys == ["student", "student.lr"]
    summary = tables.summary
    assert summary["student"].tolist() == ["cnn", "cnn", "mlp", "mlp"]
    assert summary["student.lr"].tolist() == [0.001, 0.1, 0.001, 0.1]
    assert summary["n"].tolist() == [2, 1, 2, 2] and summary["n_missing"].tolist() == [0, 1, 0, 0]
    assert summary["student_acc_mean"].tolist() == pytest.approx([0.55, 0.5, 0.55, 0.55])
    runs = tables.runs
    assert runs.loc[runs.status == "failed", "error"].tolist() == ["RuntimeError: boom"]
    assert math.isnan(runs.loc[runs.status == "failed", "student_acc"].item())


def test_plan_lists_jobs_that_never_started(tmp_path):
    grid_sweep(tmp_path, {(0, 2): [0.8, 0.9]})
    planned = [["experiment=smoke", f"alpha={a}", "temperature=2", f"seed={s}"] for a in (0, 1) for s in (0, 1)]
    aggregate.write_plan(tmp_path, planned, {})
    tables = aggregate.aggregate([tmp_path], tmp_path)
    assert tables.keys == ["alpha"]
    assert tables.runs["status"].tolist() == ["completed", "completed", "not started", "not started"]
    assert tables.runs["seed"].tolist() == [0, 1, 0, 1]
    assert tables.summary["n"].tolist() == [2, 0] and tables.summary["n_missing"].tolist() == [0, 2]
    assert "| 1 | 0 | 2 | - |" in tables.markdown


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] >= 600
        image.verify()


@pytest.mark.parametrize("layout", ["alpha x temperature", "categorical", "seeds only"])
def test_plots_for_every_sweep_layout(layout, tmp_path):
    if layout == "alpha x temperature":
        grid_sweep(tmp_path, {(0, 2): [0.8, 0.84], (0, 4): [0.9, 0.92], (1, 2): [0.7, 0.72], (1, 4): [0.75, 0.75]})
    elif layout == "categorical":  # teacher swept: its accuracy differs per point, no single reference line
        for num, (teacher, seed) in enumerate([(t, s) for t in ("cnn", "resnet18") for s in (0, 1)]):
            make_job(
                tmp_path,
                num,
                [f"teacher={teacher}", f"seed={seed}"],
                seed,
                0.6 + 0.1 * seed,
                teacher_acc=0.8 if teacher == "cnn" else 0.95,
            )
    else:
        for seed in range(3):
            make_job(tmp_path, seed, ["experiment=smoke", f"seed={seed}"], seed, 0.7 + 0.01 * seed)
    aggregate.aggregate([tmp_path], tmp_path)
    stems = ["curves", "final_accuracy"] + (["accuracy_gain"] if layout == "alpha x temperature" else [])
    assert report.write_plots(tmp_path) == [f"{stem}.{ext}" for stem in stems for ext in ("png", "svg")]
    for stem in stems:
        assert_png(tmp_path / f"{stem}.png")
        svg = (tmp_path / f"{stem}.svg").read_text()
        assert svg.startswith("<?xml") and "<svg" in svg
    final = (tmp_path / "final_accuracy.svg").read_text()
    assert "final student accuracy on validation (%)" in final and "#0072b2" in final.lower()  # words, Okabe-Ito


def test_report_without_tables_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="summary.csv'.*run kd-aggregate"):
        report.write_plots(tmp_path)


def test_a_jobs_values_come_from_the_config_its_result_json_records(tmp_path):
    """The overrides say which keys were swept; the recorded config says what they were (1 for 1.0)."""
    sweep = tmp_path / "sweep"
    grid_sweep(sweep, {(0, 4): [0.5, 0.7]})
    for num, seed in ((0, 0), (1, 1)):
        result = json.loads((sweep / str(num) / "result.json").read_text())
        result["config"] = {"alpha": 0.0, "temperature": 4.0, "seed": seed}
        (sweep / str(num) / "result.json").write_text(json.dumps(result))
    tables = aggregate.aggregate([sweep], sweep)
    assert tables.runs["seed"].tolist() == [0, 1] and tables.runs["temperature"].tolist() == [4, 4]
    assert tables.summary["n"].tolist() == [2]


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda job: (job / "result.json").write_text('{"status": "compl'), "result.json cannot be read"),
        (lambda job: (job / "result.json").write_text("[]"), "result.json holds a list"),
        (lambda job: (job / "result.json").write_text('{"status": "done"}'), "result.json holds no valid status"),
        (lambda job: (job / "metrics.csv").unlink(), "metrics.csv is missing"),
        (lambda job: (job / "metrics.csv").write_text(""), "metrics.csv cannot be read"),
        (lambda job: (job / "metrics.csv").write_text("a,b\n1,2\n"), "metrics.csv has no column 'stage'"),
    ],
)
def test_a_damaged_job_is_listed_as_such_and_the_others_aggregated(damage, reason, tmp_path):
    grid_sweep(tmp_path, {(0, 4): [0.5, 0.7]})
    damage(tmp_path / "1")
    tables = aggregate.aggregate([tmp_path], tmp_path)
    runs = pd.read_csv(tmp_path / "runs.csv", keep_default_na=False)
    assert runs["status"].tolist() == ["completed", "damaged"]
    assert reason in runs["error"][1] and runs["run_dir"][1] == str(tmp_path / "1")
    assert tables.summary["n"].sum() == 1 and tables.summary["n_missing"].sum() == 1  # its point may be unknown


def test_kd_aggregate_out_that_is_a_file_or_under_one_is_one_line(tmp_path, capsys):
    grid_sweep(tmp_path / "sweep", {(0, 4): [0.5]})
    (tmp_path / "file").write_text("x")
    for out in (tmp_path / "file", tmp_path / "file" / "tables"):
        with pytest.raises(SystemExit) as exit_info:
            sweep_tools.aggregate_main([str(tmp_path / "sweep"), "-o", str(out)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"kd-aggregate: error: --out '{out}' ") and "expected a directory" in err
        assert "\n" not in err
    assert (tmp_path / "file").read_text() == "x"


@pytest.mark.parametrize("content", ["", "\n", "a,b\n1,2\n"])
def test_kd_report_on_an_empty_or_columnless_summary_is_one_line(content, tmp_path, capsys):
    (tmp_path / "summary.csv").write_text(content)
    (tmp_path / "curves.csv").write_text("epoch,n\n")
    with pytest.raises(SystemExit) as exit_info:
        sweep_tools.report_main([str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kd-report: error: '{tmp_path / 'summary.csv'}'") and "run kd-aggregate" in err
    assert "\n" not in err


def test_equal_differences_give_no_interval_and_no_significance_star():
    """Three seeds whose gains are all equal have no observed spread: no zero-width CI, no p, no star; a star
    needs at least 3 seeds whose CI excludes 0."""
    from kd_runner.sweep import aggregate, stats

    gain = stats.paired_gain([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])
    assert gain["std"] == pytest.approx(0, abs=1e-12) and math.isnan(gain["ci95_low"]) and math.isnan(gain["p"])
    row = {f"{aggregate.GAIN}_{k}": v for k, v in gain.items()}
    cell = aggregate._gain_cell(row)
    assert cell == "+0.1000 (3 seeds, all differences equal: no interval)" and "*" not in cell
    two = {f"{aggregate.GAIN}_{k}": v for k, v in stats.paired_gain([0.9, 0.95], [0.1, 0.1]).items()}
    assert two[f"{aggregate.GAIN}_ci95_low"] > 0 and "*" not in aggregate._gain_cell(two)  # 2 seeds: no star


def test_a_run_repeated_or_a_sweep_named_twice_counts_once_and_a_run_without_metrics_is_damaged(tmp_path):
    """`seed=0,0` runs the same computation twice (one result key): n counts it once and summary.md names the
    repeat; the same sweep given twice to kd-aggregate is read once; a completed run whose result.json lacks a
    metric is damaged, not counted in n while missing from the mean."""
    from kd_runner.sweep import aggregate

    sweep = tmp_path / "sweep"
    for job, (seed, acc) in enumerate([(0, 0.5), (0, 0.5), (1, 0.7), (2, 0.9)]):
        metrics = {name: acc for name in aggregate.FINAL_METRICS}
        if job == 3:
            del metrics["student_acc"]
        record = {
            "status": "completed",
            "overrides": [f"seed={seed}"],
            "config": {"seed": seed},
            "result_key": f"key-{seed}",
            "metrics": metrics,
            "teacher": {},
        }
        (sweep / str(job)).mkdir(parents=True)
        (sweep / str(job) / "result.json").write_text(json.dumps(record))
        pd.DataFrame({"stage": ["student"], "epoch": [1], **{m: [acc] for m in aggregate.CURVE_METRICS}}).to_csv(
            sweep / str(job) / "metrics.csv", index=False
        )
    tables = aggregate.aggregate([sweep, sweep], tmp_path / "out")
    assert tables.runs["duplicate_of"].tolist() == ["", "0", "", ""]
    assert tables.runs["status"].tolist() == ["completed", "completed", "completed", "damaged"]
    assert tables.summary["n"].tolist() == [2] and tables.summary["student_acc_mean"].tolist() == [0.6]
    assert "counted once: 1 (of 0)" in tables.markdown
    assert tables.curves["n"].tolist() == [2]
