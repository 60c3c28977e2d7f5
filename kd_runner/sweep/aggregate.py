"""Sweep aggregation: the job directories of one or more sweeps -> runs.csv, summary.csv, curves.csv, summary.md.

A job directory is a subdirectory of a sweep directory holding `.hydra/overrides.yaml`, which Hydra writes
before the job starts; so failed jobs (result.json with status "failed") and interrupted ones (no
result.json: "incomplete") are listed too, and so are the jobs of the sweep's plan (sweep.json, written
by kd-run when the sweep starts) that never started ("not started"). Sweep points are the distinct values
of every swept key, i.e. every override key other than `seed` whose value differs between jobs; the
statistics of a point are taken over its completed jobs (its seeds).
"""

from __future__ import annotations

import json
import math
import numbers
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from kd_runner.errors import UserError
from kd_runner.status import Status
from kd_runner.store.files import write_csv, write_json, write_text
from kd_runner.train.metrics import METRIC_NAMES

FINAL_METRICS = (*METRIC_NAMES, "best_student_acc")
CURVE_METRICS = ("train_loss", *METRIC_NAMES)
GAIN = "student_acc_gain"  # student_acc_mean minus that of the alpha=1 (no distillation) point
PLAN = "sweep.json"  # the overrides of every job of a sweep, written when it starts


@dataclass
class Tables:
    runs: pd.DataFrame  # one row per job
    summary: pd.DataFrame  # one row per sweep point
    curves: pd.DataFrame  # one row per sweep point and student epoch
    keys: list[str]  # the swept keys (without seed), in command-line order
    markdown: str


def job_dirs(sweep_dir: Path | str) -> list[Path]:
    """The job directories of a sweep, in job order (numbered subdirectories sort numerically)."""
    sweep_dir = Path(sweep_dir)
    jobs = [p for p in sweep_dir.iterdir() if (p / ".hydra" / "overrides.yaml").is_file()] if sweep_dir.is_dir() else []
    return sorted(jobs, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def write_plan(sweep_dir: Path | str, jobs: list[list[str]]) -> None:
    """Record the overrides of every job a sweep will run, so that an interrupted sweep still shows its
    swept keys and the jobs that never started."""
    write_json(Path(sweep_dir) / PLAN, {"jobs": jobs})


def aggregate(sweep_dirs: list[Path | str], out_dir: Path | str) -> Tables:
    """Read every job of `sweep_dirs`, write the four tables into `out_dir` and return them."""
    entries = []  # (overrides, the rest of its runs.csv row, student history or None) per job
    for sweep_dir in map(Path, sweep_dirs):
        if not sweep_dir.is_dir():
            raise UserError(f"{str(sweep_dir)!r}: no such directory")
        started = [_read_job(job) for job in job_dirs(sweep_dir)]
        if not started:
            raise UserError(f"{str(sweep_dir)!r} holds no job directories (subdirectories with .hydra/overrides.yaml)")
        never = _never_started(sweep_dir, [overrides for overrides, _, _ in started])
        entries += started + [(overrides, _not_started_row(overrides), None) for overrides in never]
    override_keys = []
    for overrides, _, _ in entries:
        override_keys += [k for k in overrides if k not in override_keys and k != "seed"]
    columns = [
        "job",
        *override_keys,
        "seed",
        "status",
        "error",
        "teacher_source",
        "teacher_cache_key",
        *FINAL_METRICS,
        "run_dir",
    ]
    runs = pd.DataFrame([{**overrides, **row} for overrides, row, _ in entries], columns=columns)
    for key in (*override_keys, "seed"):
        runs[key] = _as_numbers_if_all_are(runs[key])
    keys = [k for k in override_keys if runs[k].nunique(dropna=False) > 1]
    summary = summarize(runs, keys)
    curves = mean_curves(runs, [history for _, _, history in entries], keys)
    tables = Tables(runs, summary, curves, keys, summary_markdown(summary, keys))
    out_dir = Path(out_dir)
    write_csv(out_dir / "runs.csv", runs)
    write_csv(out_dir / "summary.csv", summary)
    write_csv(out_dir / "curves.csv", curves)
    write_text(out_dir / "summary.md", tables.markdown)
    return tables


def _split(overrides: list[str]) -> dict[str, str]:
    """Hydra override strings (`alpha=0.5`, `+key=v`) as key -> value text."""
    pairs = (item.lstrip("+~").partition("=") for item in overrides)
    return {key: value for key, _, value in pairs}


def _read_job(job: Path) -> tuple[dict, dict, pd.DataFrame | None]:
    """A started job's overrides, the rest of its runs.csv row and, when it completed, the student rows of
    its metrics.csv."""
    overrides = _split(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()) or [])
    config = yaml.safe_load((job / ".hydra" / "config.yaml").read_text()) or {}
    result_path = job / "result.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {"status": Status.INCOMPLETE}
    status = Status.INCOMPLETE if result["status"] == Status.RUNNING else Status(result["status"])
    metrics = result.get("metrics", {})
    teacher = result.get("teacher", {})
    row = {
        "job": job.name,
        "seed": config.get("seed"),
        "status": status.value,
        "error": result.get("message", "") if status != Status.COMPLETED else "",
        "teacher_source": teacher.get("source", ""),
        "teacher_cache_key": teacher.get("cache_key", ""),
        **{name: metrics.get(name, math.nan) for name in FINAL_METRICS},
        "run_dir": str(job),
    }
    history = None
    if status == Status.COMPLETED:
        history = pd.read_csv(job / "metrics.csv")
        history = history[history["stage"] == "student"]
    return overrides, row, history


def _never_started(sweep_dir: Path, started: list[dict]) -> list[dict]:
    """The planned jobs (sweep.json) that have no job directory: the sweep stopped before them."""
    plan = sweep_dir / PLAN
    if not plan.is_file():
        return []
    left = Counter(tuple(overrides.items()) for overrides in started)
    never = []
    for job in map(_split, json.loads(plan.read_text())["jobs"]):
        if left[tuple(job.items())] > 0:
            left[tuple(job.items())] -= 1
        else:
            never.append(job)
    return never


def _not_started_row(overrides: dict) -> dict:
    return {
        "job": "",
        "seed": overrides.get("seed"),
        "status": Status.NOT_STARTED.value,
        "error": "",
        "teacher_source": "",
        "teacher_cache_key": "",
        **{name: math.nan for name in FINAL_METRICS},
        "run_dir": "",
    }


def _as_numbers_if_all_are(values: pd.Series) -> pd.Series:
    """Override values as numbers (`0.5`, `1`, `1e-3`) when every given one reads as a number, else as text."""
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers if numbers.notna().sum() == values.notna().sum() else values


def points(frame: pd.DataFrame, keys: list[str]):
    """(point, rows) for each sweep point: the distinct values of the swept keys, sorted."""
    if not keys:
        yield {}, frame
        return
    for values, rows in frame.groupby(keys, sort=True, dropna=False):
        yield dict(zip(keys, values)), rows


def summarize(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per point: n completed jobs, n_missing (failed, incomplete or not started), mean and sample std."""
    rows = []
    for point, jobs in points(runs, keys):
        done = jobs[jobs["status"] == Status.COMPLETED]
        row = {**point, "n": len(done), "n_missing": len(jobs) - len(done)}
        for name in FINAL_METRICS:
            row[f"{name}_mean"] = done[name].mean()
            row[f"{name}_std"] = done[name].std(ddof=1)  # NaN (an empty cell) when n < 2
        rows.append(row)
    stats = [f"{name}_{s}" for name in FINAL_METRICS for s in ("mean", "std")]
    summary = pd.DataFrame(rows, columns=[*keys, "n", "n_missing", *stats])
    if "alpha" in keys and (summary["alpha"].apply(_is_one)).any():
        summary[GAIN] = _gain_over_alpha1(summary, keys)
    return summary


def _is_one(value) -> bool:
    return isinstance(value, numbers.Real) and float(value) == 1.0


def _gain_over_alpha1(summary: pd.DataFrame, keys: list[str]) -> list[float]:
    """student_acc_mean minus that of the alpha=1 point with the same values of the other swept keys."""
    others = [k for k in keys if k != "alpha"]
    baseline = {
        tuple(row[k] for k in others): row["student_acc_mean"]
        for row in summary.to_dict("records")
        if _is_one(row["alpha"])
    }
    return [
        row["student_acc_mean"] - baseline.get(tuple(row[k] for k in others), math.nan)
        for row in summary.to_dict("records")
    ]


def mean_curves(runs: pd.DataFrame, histories: list[pd.DataFrame | None], keys: list[str]) -> pd.DataFrame:
    """Per point and student epoch: the number of seeds, mean and sample std of each per-epoch metric."""
    frames = []
    for job, history in zip(runs.to_dict("records"), histories):
        if history is not None:
            frames.append(history.assign(**{k: job[k] for k in keys}))
    stats = [f"{name}_{s}" for name in CURVE_METRICS for s in ("mean", "std")]
    columns = [*keys, "epoch", "n", *stats]
    if not frames:
        return pd.DataFrame(columns=columns)
    rows = []
    for point, jobs in points(pd.concat(frames, ignore_index=True), keys):
        for epoch, at_epoch in jobs.groupby("epoch", sort=True):
            row = {**point, "epoch": epoch, "n": len(at_epoch)}
            for name in CURVE_METRICS:
                row[f"{name}_mean"] = at_epoch[name].mean()
                row[f"{name}_std"] = at_epoch[name].std(ddof=1)
            rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def format_value(value) -> str:
    """A swept key's value for people: 0.5, 1 (not 1.0), mlp."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def _cell(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _story_lines(summary: pd.DataFrame, keys: list[str]) -> list[str]:
    """The teacher's accuracy and the no-distillation baseline, so the table reads on its own."""
    teacher = summary["teacher_acc_mean"].dropna().round(4).unique()
    if len(teacher) == 1:
        lines = [f"- teacher_acc: {teacher[0]:.4f}"]
    else:
        lines = ["- teacher_acc: " + ("differs by point (its column)" if len(teacher) else "- (no completed job)")]
    baseline = summary[summary["alpha"].apply(_is_one)] if "alpha" in keys else summary.iloc[:0]
    if len(baseline) == 1:
        acc = _cell(baseline["student_acc_mean"].iloc[0], baseline["student_acc_std"].iloc[0])
        lines.append(f"- no distillation (alpha=1): student_acc {acc}")
    elif len(baseline) > 1:
        lines.append("- no distillation (alpha=1): student_acc in the alpha=1 rows")
    else:
        lines.append("- no distillation (alpha=1): not in this sweep (add alpha=1 to the swept values to compare)")
    return lines


def summary_markdown(summary: pd.DataFrame, keys: list[str]) -> str:
    """summary.csv for people: one row per point, "mean ± std" cells (std over seeds, ddof=1)."""
    swept = " x ".join(keys) if keys else "no key (seeds only)"
    header = [*keys, "n", "missing", *FINAL_METRICS] + ([GAIN] if GAIN in summary else [])
    lines = [
        f"# Sweep over {swept}",
        "",
        "Final-epoch validation metrics, mean ± sample std over the completed seeds of each point.",
        "",
        *_story_lines(summary, keys),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for row in summary.to_dict("records"):
        cells = [format_value(row[k]) for k in keys] + [str(row["n"]), str(row["n_missing"])]
        cells += [_cell(row[f"{name}_mean"], row[f"{name}_std"]) for name in FINAL_METRICS]
        if GAIN in summary:
            cells.append("-" if math.isnan(row[GAIN]) else f"{row[GAIN]:+.4f}")
        lines.append("| " + " | ".join(cells) + " |")
    if GAIN in summary:
        lines += ["", f"{GAIN}: student_acc_mean minus that of alpha=1 (no distillation) at the same other keys."]
    return "\n".join(lines) + "\n"
