"""The end of a sweep, and the `kd-aggregate` / `kd-report` entry points that redo it on any sweep directory.

`finish_sweep` is what `kd-run` calls when a multirun returns or stops: tables (aggregate.py), plots
(report.py) and a summary on stdout. `kd-aggregate DIR [DIR ...]` does the same for sweep directories
already on disk (also interrupted ones, or several sweeps together); `kd-report DIR` redraws the plots
from the tables.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from kd_runner import loggers
from kd_runner.errors import UserError
from kd_runner.status import Status
from kd_runner.store.files import check_writable, remove_orphan_temps
from kd_runner.sweep import aggregate, report, search

TABLES = ("runs.csv", "summary.csv", "curves.csv", "summary.md")
STATUSES = [s.value for s in Status if s != Status.RUNNING]  # the order of the sweep's "jobs:" line


def write_outputs(sweep_dirs: list[Path], out_dir: Path) -> tuple[aggregate.Tables, list[str]]:
    """Tables and plots of `sweep_dirs` into `out_dir`, and a summary on stdout; the tables and the names of
    the files written."""
    remove_orphan_temps(out_dir)  # e.g. a plot whose writer was killed
    tables = aggregate.aggregate(sweep_dirs, out_dir)
    plots = write_plots(sweep_dirs, out_dir)
    runs = tables.runs
    print(tables.markdown)
    counts = runs["status"].value_counts()
    print("jobs: " + ", ".join(f"{counts[status]} {status}" for status in STATUSES if status in counts))
    for job in runs[runs["status"].isin([Status.FAILED, Status.INCOMPLETE, Status.DAMAGED])].to_dict("records"):
        print(f"  {job['status']}: {job['run_dir']}" + (f": {job['error']}" if job["error"] else ""))
    reused = runs["reused_from"].astype(bool).sum()
    if reused:
        print(f"reused: {reused} job(s) recorded an equal earlier job's results instead of training (see reused_from)")
    sources = runs[runs["reused_from"] == ""]["teacher_source"].value_counts()
    if sources.get("trained", 0) or sources.get("cache", 0):
        print(
            f"teacher: fine-tuned in {sources.get('trained', 0)} job(s), loaded from the cache in "
            f"{sources.get('cache', 0)}"
        )
    print(f"written to {out_dir}: " + ", ".join((*TABLES, *plots)))
    return tables, [*TABLES, *plots]


def write_plots(sweep_dirs: list[Path], out_dir: Path) -> list[str]:
    """The sweep's plots from its tables, or a search's from its study (Optuna's plots, trials.csv and
    best_params.json; several studies are not merged); the names written."""
    studies = [d for d in sweep_dirs if (Path(d) / search.STUDY_DB).is_file()]
    if len(studies) == 1:
        return search.write_search_outputs(studies[0], out_dir)
    return report.write_plots(out_dir)


def finish_sweep(sweep_dir: Path) -> bool:
    """Called by kd-run when a multirun ends or stops: the sweep's tables and plots, also to the trackers
    its jobs reported to; True when every job completed."""
    if not aggregate.job_dirs(sweep_dir):
        print(f"kd-run: no job of the sweep started; nothing to aggregate in {sweep_dir}", file=sys.stderr)
        return False
    tables, written = write_outputs([sweep_dir], sweep_dir)
    completed = bool((tables.runs["status"] == Status.COMPLETED).all())
    logger = _jobs_logger(sweep_dir)
    if logger is not None:
        name = "sweep over " + (" x ".join(tables.keys) or "seeds")
        loggers.finish_sweep(logger, sweep_dir, [sweep_dir / n for n in written], name, completed)
    return completed


def _jobs_logger(sweep_dir: Path) -> dict | None:
    """The trackers a sweep's jobs reported to, as the first job's result.json recorded them (None: no job
    has recorded its config yet)."""
    for path in [*sorted(sweep_dir.glob("*/result.json")), *sorted(sweep_dir.glob("*/seed_*/result.json"))]:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            return json.loads(path.read_text())["config"]["logger"]
    return None


def _fail(prog: str, exc: UserError) -> None:
    print(f"{prog}: error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def aggregate_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="kd-aggregate",
        description="Re-aggregate sweep directories into runs.csv, summary.csv, curves.csv, summary.md and plots.",
    )
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="a sweep directory (outputs/sweeps/...)")
    parser.add_argument(
        "-o", "--out", type=Path, help="where to write (default: DIR itself; required for several DIRs)"
    )
    args = parser.parse_args(argv)
    try:
        if args.out is None and len(args.dirs) > 1:
            raise UserError("several sweep directories need --out DIR for the combined tables")
        check_out_dir(args.out or args.dirs[0], given=args.out is not None)
        write_outputs(args.dirs, args.out or args.dirs[0])
    except UserError as exc:
        _fail("kd-aggregate", exc)


def check_out_dir(out: Path, given: bool = True) -> None:
    """Refuse an --out (or, not `given`, the sweep directory the tables go into) that is a file, lies under one
    or cannot be written (a read-only copy of a sweep), before anything is read or written."""
    for path in (out, *out.parents):
        if path.exists():
            if not path.is_dir():
                where = "is a file" if path == out else f"lies under the file {str(path)!r}"
                raise UserError(f"--out {str(out)!r} {where}: expected a directory (it is created when missing)")
            break
    if given:
        check_writable(out, "--out")
        return
    try:
        check_writable(out, "DIR")
    except UserError as exc:
        raise UserError(f"{exc}; write the tables elsewhere with --out OTHER_DIR") from None


def report_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="kd-report",
        description="Redraw a sweep's plots (PNG, SVG) from its summary.csv and curves.csv (a search's: its study).",
    )
    parser.add_argument("dir", type=Path, metavar="DIR", help="a sweep directory holding summary.csv and curves.csv")
    args = parser.parse_args(argv)
    try:
        check_writable(args.dir, "DIR")
        plots = write_plots([args.dir], args.dir)
    except UserError as exc:
        _fail("kd-report", exc)
    print(f"written to {args.dir}: " + ", ".join(plots))
