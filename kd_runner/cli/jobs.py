"""What Hydra's launcher runs for each job: its runs (one, or a search trial's seeds) through kd_runner.run,
the console's line for each, and the job's exit code.

In a sweep a failing or diverged run is recorded in its result.json and the other jobs go on; an
interrupted run stops the sweep (`JobStopped`). Exit codes: 0 done (or skipped: finished before), 1 a bug
(or a sweep job that did not complete), 2 a usage error, 3 a run diverged, 75 interrupted by SIGTERM/SIGINT.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from kd_runner.cli import compose
from kd_runner.cli.compose import Job
from kd_runner.errors import Diverged, RunInterrupted, UserError, one_line
from kd_runner.runtime import interrupt
from kd_runner.runtime.process import launched_world_size
from kd_runner.runtime.shared import Shared
from kd_runner.status import Status
from kd_runner.store import rundir
from kd_runner.sweep import search

log = logging.getLogger("kd_runner")


class JobStopped(BaseException):
    """Carries a job's RunInterrupted (the signal, and how to resume) out of Hydra's launcher, which keeps
    a job's Exceptions, to kd-run's main."""

    def __init__(self, error: RunInterrupted, signal: str | None, hint: str):
        super().__init__(str(error))
        self.error, self.signal, self.hint = error, signal, hint

    def __reduce__(self):  # a parallel launcher's worker hands it to the main process, which reports it
        return JobStopped, (self.error, self.signal, self.hint)


class OneJob:
    """The task function of a single run: its checked job, in the directory Hydra made for it."""

    def __init__(self, job: Job):
        self.job = job

    def __call__(self, raw: DictConfig) -> list[dict]:
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        return run_job(self.job, run_dir, resume_hint(hydra_cfg, multirun=False), multirun=False)


class PlannedJobs:
    """The task function of kd-run's sweeper: each job runs the config checked for it (by job number)."""

    def __init__(self, planned: list[Job], shared: Shared | None = None):
        self.planned = {job.num: job for job in planned}
        self.shared = shared  # what the jobs share when they run in this process (None: nothing)

    def __call__(self, raw: DictConfig) -> int:
        hydra_cfg = HydraConfig.get()
        return exit_code(in_sweep(self.planned[hydra_cfg.job.num], hydra_cfg, self.shared))

    def __getstate__(self) -> dict:  # a parallel launcher's worker process gets the jobs, not the shared work
        return {**self.__dict__, "shared": None}


class StartedJobs:
    """The task function for a sweeper that picks its jobs as it runs (Optuna's): each job is checked as
    it starts; returns the value the sweeper optimizes, and keeps each job's exit code."""

    def __init__(self):
        self.exit_codes: list[int] = []

    def __call__(self, raw: DictConfig) -> float:
        hydra_cfg = HydraConfig.get()
        job = start(raw, hydra_cfg)
        records = in_sweep(job, hydra_cfg)
        self.exit_codes.append(exit_code(records))
        return search.trial_value(job.cfg, records)


def start(raw: DictConfig, hydra_cfg: DictConfig) -> Job:
    """A job picked as the sweep runs, checked: a mistake stops the sweep with one line and exit 2, and the
    job's directory (only Hydra's .hydra/ and log so far) is removed."""
    run_dir = Path(hydra_cfg.runtime.output_dir)
    try:
        overrides = list(hydra_cfg.overrides.task)
        cfg = compose.named(
            compose.job_config(raw, hydra_cfg, multirun=True), overrides, list(hydra_cfg.sweeper.params)
        )
        from kd_runner import run

        finished = run.check_job(cfg, run_dir, dir_key="hydra.sweep.dir", processes=launched_world_size())
        return Job(hydra_cfg.job.num, cfg, run_dir, overrides, finished is not None)
    except UserError as exc:
        if not (run_dir / rundir.RESULT).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        fail(exc)


def in_sweep(job: Job, hydra_cfg: DictConfig, shared: Shared | None = None) -> list[dict]:
    """A sweep job's runs. Its INFO lines and summary go to its own log; the console gets one line per run.
    A parallel launcher's worker process handles SIGTERM/SIGINT itself (Ctrl-C reaches it too)."""
    for handler in logging.getLogger().handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if interrupt.active():
        return run_job(job, run_dir, resume_hint(hydra_cfg, multirun=True), multirun=True, shared=shared)
    with interrupt.graceful_stop():
        return run_job(job, run_dir, resume_hint(hydra_cfg, multirun=True), multirun=True, shared=shared)


def run_job(job: Job, run_dir: Path, hint: str, multirun: bool, shared: Shared | None = None) -> list[dict]:
    """The job's runs (one, or a search trial's seeds) and their records, after its config tree in the log."""
    log.info("%s", config_tree(job.cfg))
    runs = search.trial_runs(job.cfg, run_dir)
    reuse_from = job.reuse_from if len(runs) == 1 else None
    return [run_one(cfg, path, job, reuse_from, hint, multirun, shared) for cfg, path in runs]


def config_tree(cfg) -> str:
    """The job's checked config as YAML under a header (as lightning-hydra-template prints it at the start
    of a run, without rich): what runs, defaults and interpolations filled in."""
    return "config of this run:\n" + OmegaConf.to_yaml(dataclasses.asdict(cfg)).rstrip()


def run_one(
    cfg, run_dir: Path, job: Job, reuse_from: str | None, hint: str, multirun: bool, shared: Shared | None = None
) -> dict:
    """One run and its record. In a sweep, a failed run's record says how it failed and the sweep goes on;
    alone, a mistake is one line and exit 2, a bug raised with its traceback."""
    from kd_runner import run
    from kd_runner.run import results

    try:
        record = run.run(cfg, run_dir, reuse_from=reuse_from, overrides=job.overrides, shared=shared)
    except RunInterrupted as exc:
        report(job, results.failure(exc), run_dir, multirun)
        raise JobStopped(exc, interrupt.requested(), hint) from None
    except Exception as exc:
        if isinstance(exc, UserError) and not multirun:
            fail(exc)
        if not multirun:
            raise
        # recorded in its result.json by kd_runner.run; the other jobs of the sweep go on
        log.error("job failed: %s", one_line(exc), exc_info=not isinstance(exc, UserError))
        record = results.failure(exc)
    report(job, record, run_dir, multirun)
    return record


def report(job: Job, record: dict, run_dir: Path, multirun: bool) -> None:
    """The console's word on a run: in a sweep one line (the summary goes to the job's log), alone the
    summary; a diverged run alone exits 3 (it is recorded; a sweep's other jobs go on)."""
    from kd_runner.run.results import job_line, summary

    if record.get("status") == Status.DIVERGED:
        print(f"kd-run: diverged: {record['message']} ({run_dir})", file=sys.stderr)
        if not multirun:
            sys.exit(Diverged.exit_code)
    elif record.get("status") == Status.COMPLETED and multirun:
        log.info("%s", summary(record, run_dir))
    elif record.get("status") == Status.COMPLETED:
        print(summary(record, run_dir))
    if multirun:
        print(job_line(job.num, job.overrides, record, job.finished), flush=True)


def resume_hint(hydra_cfg: DictConfig, multirun: bool) -> str:
    """How to continue: the same command, into the same directory (named if it was a default)."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    if compose.dir_given(hydra_cfg, key):
        return "run the same command again to resume"
    where = hydra_cfg.sweep.dir if multirun else hydra_cfg.run.dir
    return f"run the same command with {key}={where} to resume"


def exit_code(records: list[dict]) -> int:
    """A job's exit code: its worst run's (0 when each completed or was skipped)."""
    return max((int(record.get("exit_code", 0)) for record in records), default=0)


def sweep_exit_code(codes: list[int], all_completed: bool) -> int:
    """The worst job's exit code, at least 1 when a job did not complete."""
    worst = max(codes, default=0)
    return worst if all_completed else max(worst, 1)


def follow(planned: list[Job]) -> int:
    """A torchrun process other than rank 0: it computes its part of every job, in the order rank 0 runs
    them, and writes nothing (no run directory, no logs). A job that fails or diverges is recorded by rank
    0; like rank 0, a worker goes on with the next job of a sweep. An interruption ends it."""
    from kd_runner import run
    from kd_runner.runtime import distributed

    failed = None
    try:
        with interrupt.graceful_stop():
            for cfg, _ in (trial for job in planned for trial in search.trial_runs(job.cfg, Path())):
                try:
                    run.run(cfg, None)
                except (UserError, distributed.MainFailed) as exc:
                    failed = exc
    except RunInterrupted as exc:
        fail(exc, label=f"interrupted by {interrupt.requested()}")
    except KeyboardInterrupt:
        sys.exit(RunInterrupted.exit_code)
    if isinstance(failed, UserError) and len(planned) == 1:
        fail(failed)
    return 0


def fail(exc: BaseException, label: str = "error", hint: str = "") -> None:
    """One line on stderr and the error's exit code; the full traceback only with HYDRA_FULL_ERROR=1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    print(f"kd-run: {label}: {exc}" + (f"; {hint}" if hint else ""), file=sys.stderr)
    sys.exit(exc.exit_code)
