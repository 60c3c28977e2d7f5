"""`hydra.sweeper.together=k`: the sweeper's side of training up to k jobs' students at once
(kd_runner.run.together, the mechanism). A sweeper setting, not a run's: no job's config, digest or
result key holds it, and a job trained together records what it would alone.

Under the basic launcher the sweeper hands each group here: Hydra's `run_job` makes every job's
directory, `.hydra/` and log as for any job, then the group trains, its log lines going to each of its
jobs' logs, and the console gets each job's usual line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import configure_log, run_job

from kd_runner.cli import jobs
from kd_runner.cli.compose import Job
from kd_runner.errors import RunInterrupted, UserError
from kd_runner.runtime import interrupt
from kd_runner.runtime.shared import Shared

log = logging.getLogger("kd_runner")
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format


def check(together) -> None:
    """`hydra.sweeper.together`: a whole number >= 1 (1: each job alone, as without it)."""
    if isinstance(together, bool) or not isinstance(together, int) or together < 1:
        raise UserError(
            f"hydra.sweeper.together={together!r} is not allowed: expected a whole number >= 1 "
            "(the most jobs whose students train at once; 1: one after another)"
        )


def groups(planned: list[Job], together: int, here: bool) -> list[list[Job]]:
    """The jobs in the order they run, in groups of up to `together` that train at once (`here`: the jobs
    run in this process); one console line for each reason some train alone."""
    if together == 1:
        return [[job] for job in planned]
    if not here:
        print(
            f"kd-run: together: hydra.sweeper.together={together} needs the default launcher in one process; "
            "the jobs run one after another"
        )
        return [[job] for job in planned]
    from kd_runner.run.together import plan_groups

    apart = {i: why for i, job in enumerate(planned) if (why := _apart(job))}
    cfgs, run_dirs = [job.cfg for job in planned], [job.run_dir for job in planned]
    order, alone = plan_groups(cfgs, run_dirs, together, apart)
    by_reason: dict[str, list[int]] = {}
    for i, why in sorted(alone.items()):
        by_reason.setdefault(why, []).append(planned[i].num)
    for why, nums in by_reason.items():
        print(f"kd-run: together: job(s) {', '.join(map(str, nums))} train alone: {why}")
    return [[planned[i] for i in group] for group in order]


def _apart(job: Job) -> str | None:
    """Why the sweeper keeps a job out of any group before its config is looked at."""
    if job.finished:
        return "finished before (skipped)"
    if job.reuse_from:
        return "it reuses an earlier job's results"
    if job.run_dir is None:
        return "its directory is known only when it runs"
    return None


def run_group(group: list[Job], hydra_context, hydra_config, shared: Shared | None) -> list[int]:
    """The group's jobs, each with its directory and Hydra's files made as for any job, trained at once;
    their exit codes. An interruption records every job of the group and stops the sweep (JobStopped)."""
    from kd_runner.run.together import run_together

    places = [_placed(job, hydra_context) for job in group]
    run_dirs = [run_dir for run_dir, _, _ in places]
    configure_log(hydra_config.hydra_logging, hydra_config.verbose)  # the last job's own log handler gone
    try:
        with _logs_to([log_file for _, log_file, _ in places]):
            records = run_together(
                [job.cfg for job in group], run_dirs, [job.overrides for job in group], shared, interrupt.requested
            )
    except RunInterrupted as exc:
        from kd_runner.run import results

        for job, run_dir in zip(group, run_dirs):
            jobs.report(job, results.failure(exc, interrupt.requested()), run_dir, multirun=True)
        raise jobs.JobStopped(exc, interrupt.requested(), places[0][2]) from None
    for job, run_dir, record in zip(group, run_dirs, records):
        if "exit_code" in record:
            log.error("job failed: %s", record["message"])
        jobs.report(job, record, run_dir, multirun=True)
    return [jobs.exit_code([record]) for record in records]


def _placed(job: Job, hydra_context) -> tuple[Path, Path, str]:
    """Hydra's `run_job` for the job with a task that only says where: (its directory, its log file, how to
    resume); the directory, `.hydra/` and log exist afterwards, as for any job."""

    def where(_config) -> tuple[Path, Path, str]:
        hydra_cfg = HydraConfig.get()
        run_dir = Path(hydra_cfg.runtime.output_dir)
        return run_dir, run_dir / f"{hydra_cfg.job.name}.log", jobs.resume_hint(hydra_cfg, multirun=True)

    returned = run_job(
        hydra_context=hydra_context,
        task_function=where,
        config=job.config,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
    return returned.return_value


@contextmanager
def _logs_to(paths: list[Path]) -> Iterator[None]:
    """The group's INFO lines go to each of its jobs' logs; the console keeps only warnings (as in any job)."""
    root = logging.getLogger()
    level = root.level
    for handler in root.handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
    handlers = [logging.FileHandler(path, mode="a") for path in paths]
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.setLevel(level)
        for handler in handlers:
            root.removeHandler(handler)
            handler.close()
