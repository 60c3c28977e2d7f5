"""Sweep aggregation: the job directories of one or more sweeps -> runs.csv, summary.csv, curves.csv, summary.md.

A job directory is a subdirectory of a sweep directory holding a result.json (or, for a search trial of
several seeds, seed_<s>/result.json), which a run writes as it starts and rewrites as it ends, so failed
jobs (status "failed") and killed ones (still "running": "incomplete") are listed too, and so are the
jobs of the sweep's plan (sweep.json, written by kd-run when the sweep starts) that never started ("not
started"). Sweep points are the distinct values of every swept key, i.e. every override key other than
`seed` whose value differs between jobs; the statistics of a point are taken over its completed jobs (its
seeds). A job's overrides, values and seed come from its own result.json (`overrides`, `config`). Runs of
equal swept values that computed something else (another config beyond the swept keys, other user code,
other data: two `--config-dir` sweeps aggregated together) are not pooled: the `variant` column tells them
apart (`_variants`).
"""

from __future__ import annotations

import io
import json
import math
import numbers
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kd_runner.config import NOT_COMPUTED
from kd_runner.errors import UserError
from kd_runner.names import METRIC_NAMES, network_label
from kd_runner.status import Status
from kd_runner.store.files import digest, write_csv, write_json, write_text

FINAL_METRICS = (*METRIC_NAMES, "best_student_acc")
CURVE_METRICS = ("train_loss", *METRIC_NAMES)
METRIC_STATS = ("mean", "std", "ci95_low", "ci95_high")
IDENTITY = "result_key"  # what makes two runs the same computation (config.result_key), recorded by each run
GAIN = "student_acc_gain"  # student_acc minus that of the alpha=1 (no distillation) point, paired by seed
GAIN_COLUMNS = [f"{GAIN}_{s}" for s in ("mean", "std", "ci95_low", "ci95_high", "p", "n_pairs")]
PLAN = "sweep.json"  # the overrides of every job of a sweep, written when it starts
VARIANT = "variant"  # what a run computed beyond its swept keys and seed, where runs of one point differ in it


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
    jobs = [p for p in sweep_dir.iterdir() if _runs(p)] if sweep_dir.is_dir() else []
    return sorted(jobs, key=lambda p: (0, int(p.name), "") if p.name.isdigit() else (1, 0, p.name))


def _runs(job: Path) -> list[Path]:
    """A job directory's runs: itself, or the seed_<s> runs of a search trial (seeds_per_trial > 1)."""
    if (job / "result.json").is_file():
        return [job]
    seeds = [run for run in job.glob("seed_*") if run.name[5:].isdigit() and (run / "result.json").is_file()]
    return sorted(seeds, key=lambda run: int(run.name.removeprefix("seed_")))


def write_plan(sweep_dir: Path | str, jobs: list[list[str]], reuse: dict[int, str]) -> None:
    """Record the overrides of every job a sweep will run, so that an interrupted sweep still shows its
    swept keys and the jobs that never started (kd-aggregate), and which jobs reuse an earlier one's
    results; a later call into the same directory reads the jobs (`read_plan`) to refuse another sweep."""
    write_json(Path(sweep_dir) / PLAN, {"jobs": jobs, "reuse": {str(num): owner for num, owner in reuse.items()}})


def read_plan(sweep_dir: Path | str) -> list[list[str]] | None:
    """The jobs' overrides recorded by `write_plan`, or None when the directory holds no readable plan."""
    try:
        jobs = json.loads((Path(sweep_dir) / PLAN).read_text())["jobs"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    plain = isinstance(jobs, list) and all(isinstance(j, list) and all(isinstance(o, str) for o in j) for j in jobs)
    return jobs if plain else None


def aggregate(sweep_dirs: list[Path | str], out_dir: Path | str) -> Tables:
    """Read every job of `sweep_dirs`, write the four tables into `out_dir` and return them."""
    entries = []  # (overrides, the rest of its runs.csv row, student history or None) per job
    contexts = []  # (sweep directory, its result.json or None) per job: what `_variants` reads
    for sweep_dir in _distinct(map(Path, sweep_dirs)):
        if not sweep_dir.is_dir():
            raise UserError(f"{str(sweep_dir)!r}: no such directory")
        started = [run for job in job_dirs(sweep_dir) for run in _read_job(job)]
        if not started:
            raise UserError(f"{str(sweep_dir)!r} holds no job directories (subdirectories with a result.json)")
        never = _never_started(sweep_dir, [given for given, *_ in started])  # the plan holds the given text
        entries += [tuple(entry) for _, *entry, _ in started]
        entries += [(overrides, _not_started_row(overrides), None) for overrides in never]
        contexts += [(sweep_dir, result) for *_, result in started] + [(sweep_dir, None)] * len(never)
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
        "reused_from",
        "duplicate_of",
        *FINAL_METRICS,
        "run_dir",
    ]
    runs = pd.DataFrame([{**overrides, **row} for overrides, row, _ in entries], columns=[*columns, IDENTITY])
    for key in (*override_keys, "seed"):
        runs[key] = _as_numbers_if_all_are(runs[key])
    keys = [k for k in override_keys if runs[k].nunique(dropna=False) > 1]
    runs[VARIANT] = _variants(contexts, runs, keys)
    swept = _swept_values(runs, keys)
    if len(set(zip(swept, runs[VARIANT]))) > len(set(swept)):
        keys.append(VARIANT)  # runs of equal swept values that computed something else: points of their own
        columns.insert(columns.index("seed"), VARIANT)
    runs["duplicate_of"] = _duplicates(runs, keys)
    runs = runs[columns]
    summary = summarize(runs, keys)
    curves = mean_curves(runs, [history for _, _, history in entries], keys)
    notes = _repeats_note(runs) + _variants_note(contexts, runs, keys)
    tables = Tables(runs, summary, curves, keys, summary_markdown(summary, keys) + notes)
    out_dir = Path(out_dir)
    write_csv(out_dir / "runs.csv", runs)
    write_csv(out_dir / "summary.csv", summary)
    write_csv(out_dir / "curves.csv", curves)
    write_text(out_dir / "summary.md", tables.markdown)
    return tables


def _distinct(sweep_dirs) -> list[Path]:
    """The sweep directories, each once (the same directory named twice would count every job twice)."""
    seen, distinct = set(), []
    for sweep_dir in sweep_dirs:
        if sweep_dir.resolve() not in seen:
            seen.add(sweep_dir.resolve())
            distinct.append(sweep_dir)
    return distinct


def _duplicates(runs: pd.DataFrame, keys: list[str]) -> list[str]:
    """Per run, the job it repeats: an earlier completed run of the same point with the same result key (the
    same computation, e.g. `seed=0,0`), counted once in the tables; "" for the first of each."""
    first, marks = {}, []
    for _, row in runs.iterrows():
        identity = (tuple(str(row[k]) for k in keys), row[IDENTITY])
        repeats = row["status"] == Status.COMPLETED and bool(row[IDENTITY]) and identity in first
        marks.append(first[identity] if repeats else "")
        if row["status"] == Status.COMPLETED and identity not in first:
            first[identity] = row["job"]
    return marks


def _repeats_note(runs: pd.DataFrame) -> str:
    """The line of summary.md that names the repeated runs the tables counted once (none: no line)."""
    repeats = runs[runs["duplicate_of"] != ""]
    if repeats.empty:
        return ""
    pairs = ", ".join(f"{job} (of {first})" for job, first in zip(repeats["job"], repeats["duplicate_of"]))
    return f"\nRepeated runs, the same computation as an earlier job of their point, counted once: {pairs}.\n"


def _variants(contexts: list[tuple[Path, dict | None]], runs: pd.DataFrame, keys: list[str]) -> list[str]:
    """Per run, a short digest of what it computed beyond the swept keys and the seed (`_computed`). A run
    that did not complete (not started, failed early, damaged) recorded too little: it takes the variant of
    the completed runs of its sweep directory and swept values when they agree on one, else ""."""
    own = [
        _computed(result, keys) if status == Status.COMPLETED else ""
        for (_, result), status in zip(contexts, runs["status"])
    ]
    found = {}  # (sweep directory, swept values) -> the variants of its completed runs
    for (sweep_dir, _), variant, values in zip(contexts, own, _swept_values(runs, keys)):
        if variant:
            found.setdefault((sweep_dir, values), set()).add(variant)
    filled = []
    for (sweep_dir, _), variant, values in zip(contexts, own, _swept_values(runs, keys)):
        known = found.get((sweep_dir, values), set())
        filled.append(variant or (next(iter(known)) if len(known) == 1 else ""))
    return filled


def _swept_values(runs: pd.DataFrame, keys: list[str]) -> list[tuple[str, ...]]:
    return [tuple(str(row[k]) for k in keys) for _, row in runs.iterrows()]


def _computed(result: dict, keys: list[str]) -> str:
    """A digest of what a completed run computed beyond the swept `keys` and its seed: its recorded config
    without them (nor the settings that change no result), the digests of the user's code it names, and its
    teacher's cache key (a digest of the teacher's recipe and the content of the data)."""
    computed = {
        "config": _without(result.get("config", {}), [*keys, "seed", *NOT_COMPUTED]),
        "user_code": result.get("user_code"),
        "teacher": result.get("teacher", {}).get("cache_key"),
    }
    return "v" + digest(computed)[:8]  # a letter first: no table reader takes it for a number


def _without(config: dict, keys: list[str]) -> dict:
    """`config` without the (dotted) `keys`: a key naming a config group (`teacher`) drops its whole node."""
    config = json.loads(json.dumps(config))
    for key in keys:
        *parents, last = key.lstrip("+~").split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(last, None)
    return config


def _variants_note(contexts: list[tuple[Path, dict | None]], runs: pd.DataFrame, keys: list[str]) -> str:
    """The lines of summary.md that say what the variants are, when the tables have a variant column."""
    if VARIANT not in keys:
        return ""
    where = {}
    for (sweep_dir, _), variant in zip(contexts, runs[VARIANT]):
        where.setdefault(variant or "-", []).append(str(sweep_dir))
    named = "; ".join(f"{v} ({', '.join(dict.fromkeys(dirs))})" for v, dirs in where.items())
    return (
        f"\n{VARIANT}: runs of equal swept values that computed something else (settings beyond the swept "
        "keys, the user's code, or the data and teacher) are separate points, never pooled: "
        f"{named}. Each run's variant and run_dir are in runs.csv.\n"
    )


def _split(overrides: list[str]) -> dict[str, str]:
    """Hydra override strings (`alpha=0.5`, `+key=v`) as key -> value text."""
    pairs = (item.lstrip("+~").partition("=") for item in overrides)
    return {key: value for key, _, value in pairs}


class DamagedJob(Exception):
    """A file of a job directory that is missing or unreadable: the job is listed as damaged, the rest go on."""


def _load(path: Path, parse, kind: type):
    """`path` parsed by `parse` (an empty file reads as an empty `kind`); DamagedJob naming the file when it
    is missing, unreadable or holds something other than a `kind`."""
    try:
        value = parse(path.read_text())
    except FileNotFoundError:
        raise DamagedJob(f"{path.name} is missing") from None
    except (OSError, ValueError) as exc:  # json's decode error is a ValueError
        raise DamagedJob(f"{path.name} cannot be read ({type(exc).__name__})") from None
    if value is None:
        return kind()
    if not isinstance(value, kind):
        raise DamagedJob(f"{path.name} holds a {type(value).__name__}, not a {kind.__name__}")
    return value


def _read_job(job: Path) -> list[tuple[dict, dict, dict, pd.DataFrame | None, dict | None]]:
    """A started job's runs: the job itself, or the seed_<s> runs of a search trial (see `_read_run`)."""
    return [_read_run(run, str(run.relative_to(job.parent))) for run in _runs(job)]


def _read_run(job: Path, name: str) -> tuple[dict, dict, dict, pd.DataFrame | None, dict | None]:
    """A run's overrides as given and with the values its run recorded (the config in its result.json), the
    rest of its runs.csv row, when it completed the student rows of its metrics.csv, and its result.json. A
    run whose files cannot be read is listed as damaged (and has no result.json)."""
    try:
        result = _load(job / "result.json", json.loads, dict)
        _check_record(result)
        given = _split(result.get("overrides", []))
        status = _status(result)
        history = _student_history(job) if status == Status.COMPLETED else None
        if status == Status.COMPLETED:
            _check_metrics(result)
    except DamagedJob as exc:
        return {}, {}, _damaged_row(job, name, str(exc)), None, None
    config = result.get("config", {})
    overrides = {key: _recorded(config, key, value) for key, value in given.items()}
    metrics = result.get("metrics", {})
    teacher = result.get("teacher", {})
    row = {
        "job": name,
        "seed": config.get("seed"),
        "status": status.value,
        "error": result.get("message", "") if status != Status.COMPLETED else "",
        "teacher_source": teacher.get("source", ""),
        "teacher_cache_key": teacher.get("cache_key", ""),
        "reused_from": Path(result["reused_from"]).name if "reused_from" in result else "",
        **{name: metrics.get(name, math.nan) for name in FINAL_METRICS},
        "run_dir": str(job),
        IDENTITY: result.get("result_key", ""),
    }
    return given, overrides, row, history, result


RECORD_FIELDS = {"overrides": list, "config": dict, "metrics": dict, "teacher": dict, "reused_from": str}


def _check_record(result: dict) -> None:
    """DamagedJob when a field aggregation reads holds another type than a run writes (edited from outside)."""
    for name, kind in RECORD_FIELDS.items():
        if name in result and not isinstance(result[name], kind):
            raise DamagedJob(f"result.json's {name} is a {type(result[name]).__name__}, not a {kind.__name__}")
    if not all(isinstance(o, str) for o in result.get("overrides", [])):
        raise DamagedJob("result.json's overrides are not all text")


def _check_metrics(result: dict) -> None:
    """A completed run counts in n: each final metric must be a number, or it would be missing from the mean."""
    metrics = result.get("metrics", {})
    for name in METRIC_NAMES:
        if name not in metrics:
            raise DamagedJob(f"result.json of a completed run has no {name}")
        value = metrics[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise DamagedJob(f"result.json of a completed run has {name}={value!r}, not a finite number")


def _status(result: dict) -> Status:
    """How a run stands by its result.json ("running" once it can no longer be: incomplete)."""
    if result.get("status") not in {s.value for s in Status}:
        raise DamagedJob(f"result.json holds no valid status ({result.get('status')!r})")
    return Status.INCOMPLETE if result["status"] == Status.RUNNING else Status(result["status"])


def _student_history(job: Path) -> pd.DataFrame:
    """The student rows of a completed run's metrics.csv; DamagedJob when it is missing or not such a table."""
    history = _load(job / "metrics.csv", lambda text: pd.read_csv(io.StringIO(text)), pd.DataFrame)
    missing = [c for c in ("stage", "epoch", *CURVE_METRICS) if c not in history]
    if missing:
        raise DamagedJob(f"metrics.csv has no column {missing[0]!r}")
    return history[history["stage"] == "student"]


def _damaged_row(job: Path, name: str, reason: str) -> dict:
    return {**_not_started_row({}), "job": name, "status": Status.DAMAGED.value, "error": reason, "run_dir": str(job)}


def _recorded(config: dict, key: str, value: str) -> str:
    """The value of the override `key` in the config the run recorded itself (result.json), which no later
    job can overwrite; the override's own text for a config group (`teacher=resnet18`) or a missing key."""
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    if isinstance(config, dict) and config.get("name") == value:  # a network's group: timm by its architecture
        return network_label(value, config.get("model"))
    return value if config is None or isinstance(config, (dict, list)) else str(config)


def _never_started(sweep_dir: Path, started: list[dict]) -> list[dict]:
    """The planned jobs (sweep.json) that have no job directory: the sweep stopped before them."""
    if not (sweep_dir / PLAN).is_file():
        return []
    planned = read_plan(sweep_dir)
    if planned is None:
        raise UserError(
            f"{sweep_dir / PLAN} is not a plan kd-run wrote (changed from outside): delete it (the jobs that never "
            "started are then not listed) and aggregate again"
        )
    left = Counter(tuple(overrides.items()) for overrides in started)
    never = []
    for job in map(_split, planned):
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
        "reused_from": "",
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
    """One row per point: n completed jobs, n_missing (failed, incomplete or not started), then per metric the
    mean, sample std and 95% CI of the mean; with an alpha=1 point, the paired gain over it (`paired_gains`)."""
    from kd_runner.sweep import stats  # scipy: a second to import, needed only for these tables

    rows = []
    for point, jobs in points(runs, keys):
        counted = jobs[jobs["duplicate_of"].fillna("") == ""]
        done = counted[counted["status"] == Status.COMPLETED]
        row = {**point, "n": len(done), "n_missing": len(counted) - len(done)}
        for name in FINAL_METRICS:
            values = done[name].dropna()
            row[f"{name}_mean"] = values.mean()
            row[f"{name}_std"] = values.std(ddof=1)  # NaN (an empty cell) when n < 2
            row[f"{name}_ci95_low"], row[f"{name}_ci95_high"] = stats.mean_ci(values)
        rows.append(row)
    columns = [f"{name}_{s}" for name in FINAL_METRICS for s in METRIC_STATS]
    summary = pd.DataFrame(rows, columns=[*keys, "n", "n_missing", *columns])
    if "alpha" in keys and (summary["alpha"].apply(_is_one)).any():
        gains = paired_gains(runs, keys)
        summary = pd.concat([summary, pd.DataFrame(gains, columns=GAIN_COLUMNS)], axis=1)
    return summary


def _is_one(value) -> bool:
    return isinstance(value, numbers.Real) and float(value) == 1.0


def paired_gains(runs: pd.DataFrame, keys: list[str]) -> list[dict]:
    """Per point (in `points` order), student_acc minus that of the alpha=1 point with the same values of the
    other swept keys, paired by seed (seeds completed in both; a seed run twice counts once, averaged):
    stats.paired_gain's columns. Empty for the alpha=1 points themselves and where nothing pairs."""
    from kd_runner.sweep import stats  # scipy: a second to import, needed only for these tables

    done = runs[runs["status"] == Status.COMPLETED]
    by_seed = [(point, rows.groupby("seed")["student_acc"].mean()) for point, rows in points(done, keys)]
    others = [k for k in keys if k != "alpha"]
    baselines = {tuple(p[k] for k in others): accs for p, accs in by_seed if _is_one(p["alpha"])}
    gains = {}
    for point, accs in by_seed:
        base = baselines.get(tuple(point[k] for k in others))
        if base is None or _is_one(point["alpha"]):
            continue
        seeds = accs.index.intersection(base.index)
        if len(seeds):
            gain = stats.paired_gain(accs[seeds].to_numpy(), base[seeds].to_numpy())
            gains[tuple(point.values())] = {f"{GAIN}_{k}": v for k, v in gain.items()}
    return [gains.get(tuple(point.values()), {}) for point, _ in points(runs, keys)]


def mean_curves(runs: pd.DataFrame, histories: list[pd.DataFrame | None], keys: list[str]) -> pd.DataFrame:
    """Per point and student epoch: the number of seeds, mean and sample std of each per-epoch metric."""
    frames = []
    for job, history in zip(runs.to_dict("records"), histories):
        if history is not None and not job["duplicate_of"]:  # a repeated run counts once
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


def _gain_cell(row: dict) -> str:
    """The gain cell, e.g. "+0.0500 [+0.0100, +0.0900] p=0.020 (3 seeds) *": the star when at least 3 seeds'
    CI excludes 0."""
    mean, low, high, n = (row[f"{GAIN}_{s}"] for s in ("mean", "ci95_low", "ci95_high", "n_pairs"))
    if math.isnan(mean):
        return "-"
    if math.isnan(low):
        why = "1 seed" if n < 2 else f"{n:.0f} seeds, all differences equal: no interval"
        return f"{mean:+.4f} ({why})"
    p = row[f"{GAIN}_p"]
    star = " *" if significant(row) else ""
    p_text = "p=-" if math.isnan(p) else f"p={p:.3f}"
    return f"{mean:+.4f} [{low:+.4f}, {high:+.4f}] {p_text} ({n:.0f} seeds){star}"


def significant(row: dict) -> bool:
    """Whether a point's gain earns the star of summary.md and the gain plot: a 95% CI of some width, from at
    least 3 seeds, that excludes zero (2 seeds make an interval too wide or, when equal, of no width)."""
    low, high, n = (row[f"{GAIN}_{s}"] for s in ("ci95_low", "ci95_high", "n_pairs"))
    return n >= 3 and high > low and (low > 0 or high < 0)


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
    """summary.csv for people: one row per point, "mean ± std" cells (std over seeds, ddof=1), and the paired
    gain over alpha=1 with its 95% CI and p-value when there is one."""
    swept = " x ".join(keys) if keys else "no key (seeds only)"
    has_gain = f"{GAIN}_mean" in summary
    header = [*keys, "n", "missing", *FINAL_METRICS] + ([GAIN] if has_gain else [])
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
        if has_gain:
            cells.append(_gain_cell(row))
        lines.append("| " + " | ".join(cells) + " |")
    if has_gain:
        lines += [
            "",
            f"{GAIN}: student_acc minus that of alpha=1 (no distillation) at the same other keys, paired by seed: "
            "mean [95% CI of the mean] and the paired t-test p-value over the seeds both points completed; "
            "* marks a CI that excludes zero.",
        ]
    return "\n".join(lines) + "\n"
