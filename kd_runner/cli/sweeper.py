"""kd-run's sweeper (`hydra/sweeper=kd`, the default in conf/hydra/default.yaml): Hydra's basic sweep whose
jobs are composed once and all checked before anything is written.

Hydra's BasicSweeper expands the jobs (the cartesian product of `hydra.sweeper.params` and the sweep
overrides: `split_arguments`), then composes every job again to validate the batch, and its launcher
composes it once more. Here each job is composed once (`load_sweep_config`), typed and checked with its
directory; a mistake in any job stops the sweep with one line before anything is written. The launcher
then runs the checked configs (`jobs.PlannedJobs`, keyed by job number) and hands back each job's exit
code; jobs of an equal result key reuse the first one's results, planned here, in memory. Under the
basic launcher (the default) the jobs run here, one after another, on the very configs composed for
them, and share within the process what their keys say they can (kd_runner.runtime.shared).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.core.utils import configure_log, run_job, setup_globals
from hydra.errors import HydraException
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf, open_dict

from kd_runner.cli import compose, jobs, together
from kd_runner.cli.compose import Job
from kd_runner.config import result_key
from kd_runner.errors import UserError
from kd_runner.runtime import interrupt
from kd_runner.runtime.process import launched_rank, launched_world_size
from kd_runner.runtime.shared import Shared
from kd_runner.sweep.aggregate import read_plan, write_plan

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


@dataclass
class KdSweeperConf:
    _target_: str = compose.KD_SWEEPER
    max_batch_size: int | None = None
    params: dict[str, str] | None = None
    together: int = 1  # the most jobs whose students train at once (kd_runner/cli/together.py)


class KdSweeper(Sweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None, together: int = 1):
        self.max_batch_size, self.params, self.together = max_batch_size, params or {}, together
        self.hydra_context = self.config = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        """The launcher is made once the jobs are checked, to run them (`task_function` is for sweepers
        that pick their jobs as they run)."""
        self.hydra_context, self.config = hydra_context, config

    def sweep(self, arguments: list[str]) -> int:
        """Run the sweep; its exit code (see `jobs.sweep_exit_code`)."""
        return self.launch(self.plan(arguments))

    def plan(self, arguments: list[str]) -> list[Job]:
        """Every job of the sweep, composed once and checked, with the results it reuses; nothing written."""
        check_launcher(self.config)
        together.check(self.together)
        compose.sweep_directory(self.config.hydra)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{key}={value}" for key, value in self.params.items()]
        overrides = parser.parse_overrides([*params, *arguments])
        check_discrete(overrides)
        (expanded,) = BasicSweeper.split_arguments(overrides, None)  # Hydra's own cartesian product
        planned = self.checked_jobs(expanded)
        compose.name_sweep_jobs(planned)
        check_sweep_dirs(self.config.hydra.sweep.dir, planned)
        plan_reuse(planned)
        return planned

    def checked_jobs(self, expanded: list[list[str]]) -> list[Job]:
        """Every job composed once and checked, then probed (run.check.Probes: pretrained weight files,
        feature layers); the problems of all the jobs, not only the first's, in one UserError."""
        planned, problems = [], {}
        for num, overrides in enumerate(expanded):
            try:
                planned.append(self.compose_job(num, overrides))
            except (UserError, HydraException) as exc:
                message = compose.hydra_message(exc) if isinstance(exc, HydraException) else str(exc)
                problems.setdefault(message, []).append(num)
        if planned:
            from kd_runner.run.check import Probes  # torch: imported by the jobs' checks already

            probes = Probes()
            for job in planned:
                try:
                    probes.check(job.cfg)
                except UserError as exc:
                    problems.setdefault(str(exc), []).append(job.num)
        if problems:
            raise UserError(problems_line(problems, expanded))
        return planned

    def compose_job(self, num: int, overrides: list[str]) -> Job:
        """Job `num` as the launcher will run it (its number set as the launcher sets it), checked."""
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            config.hydra.job.id = num
            config.hydra.job.num = num
        return compose.checked_job(config, num, multirun=True)

    def launch(self, planned: list[Job]) -> int:
        """The plan on disk (for a later call: kd-aggregate, a resume), then the jobs through Hydra's
        launcher; the sweep's tables and plots also when it stops early."""
        if launched_rank() > 0:  # another torchrun process: rank 0's jobs, in order, writing nothing
            return jobs.follow(planned)
        from kd_runner.cli.sweep_tools import finish_sweep  # plots (matplotlib): imported only by a sweep

        sweep_dir = Path(self.config.hydra.sweep.dir)
        reuse = {job.num: job.reuse_from for job in planned if job.reuse_from}
        write_plan(sweep_dir, [job.overrides for job in planned], reuse)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")  # as Hydra's sweepers do
        print(f"kd-run: sweep of {len(planned)} jobs into {sweep_dir}; each job's log is in its own directory")
        shared = Shared() if launched_world_size() == 1 else None  # torchrun: every process prepares in step
        task = jobs.PlannedJobs(planned, shared)
        with interrupt.graceful_stop():
            try:
                codes = self.run_here(planned, task) if self.basic() else self.run_launcher(planned, task)
            finally:
                all_completed = finish_sweep(sweep_dir)
        return jobs.sweep_exit_code(codes, all_completed)

    def basic(self) -> bool:
        return self.config.hydra.launcher._target_ == BASIC_LAUNCHER

    def run_here(self, planned: list[Job], task: jobs.PlannedJobs) -> list[int]:
        """Hydra's basic launcher (jobs one after another in this process, sharing what they can: `task`'s
        Shared) without composing each job again: each runs the config composed and checked for it."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        codes = []
        for group in together.groups(planned, self.together, here=task.shared is not None):
            if len(group) > 1:
                codes += together.run_group(group, self.hydra_context, self.config.hydra, task.shared)
                continue
            job = group[0]
            returned = run_job(
                hydra_context=self.hydra_context,
                task_function=task,
                config=job.config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            codes.append(returned.return_value)  # a job's exception is raised here
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return codes

    def run_launcher(self, planned: list[Job], task: jobs.PlannedJobs) -> list[int]:
        """The jobs through the configured launcher (joblib, submitit, ...), in its batches."""
        together.groups(planned, self.together, here=False)  # its line, when asked for
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, task_function=task, config=self.config
        )
        codes = []
        for batch in BasicSweeper.split_overrides_to_chunks(planned, self.max_batch_size):
            returns = launcher.launch([job.overrides for job in batch], initial_job_idx=batch[0].num)
            codes += [r.return_value for r in returns]  # a job's exception is raised here
        return codes


SHOWN_JOBS = 6  # the jobs a problem names at most (then how many more)


def problems_line(problems: dict[str, list[int]], expanded: list[list[str]]) -> str:
    """One line for the problems of a sweep's jobs: each problem once, with the jobs it stops (numbered and
    named by their swept values), e.g. `1 of 4 jobs cannot run: MESSAGE (job 2: distill=fitnet student=mlp)`;
    one problem of every job is the sweep's: its message alone."""
    if len(problems) == 1 and len(next(iter(problems.values()))) == len(expanded):
        return next(iter(problems))
    swept = varying_keys(expanded)
    parts = []
    for message, nums in problems.items():
        named = [job_label(num, expanded[num], swept) for num in sorted(nums)]
        if len(named) > SHOWN_JOBS:
            named = [*named[:SHOWN_JOBS], f"and {len(named) - SHOWN_JOBS} more"]
        jobs = "every job" if len(nums) == len(expanded) else ("job " if len(nums) == 1 else "jobs ") + "; ".join(named)
        parts.append(f"{message} ({jobs})")
    failing = sum(len(nums) for nums in problems.values())
    return f"{failing} of {len(expanded)} jobs cannot run: " + " | ".join(parts)


def job_label(num: int, overrides: list[str], swept: set[str]) -> str:
    """A job by its number and its swept values, e.g. `2: distill=fitnet student=mlp`."""
    values = [o for o in overrides if o.split("=", 1)[0] in swept]
    return f"{num}: {' '.join(values)}" if values else str(num)


def varying_keys(expanded: list[list[str]]) -> set[str]:
    """The override keys whose values differ among the jobs (the swept ones)."""
    values: dict[str, set[str]] = {}
    for overrides in expanded:
        for override in overrides:
            key, _, value = override.partition("=")
            values.setdefault(key, set()).add(value)
    return {key for key, seen in values.items() if len(seen) > 1}


def check_launcher(config) -> None:
    """Under torchrun every process runs the jobs one after another: only the basic launcher can do that."""
    launcher = config.hydra.launcher._target_.rsplit(".", 1)[-1]
    if launched_world_size() > 1 and launcher != "BasicLauncher":
        raise UserError(
            f"hydra/launcher={launcher} is not allowed under torchrun: every process runs the "
            "jobs one after another; use the default launcher"
        )


def check_discrete(overrides: list[Override]) -> None:
    """The basic sweeper's jobs are known in advance: lists, range() and choice(), not intervals."""
    for override in overrides:
        if override.is_sweep_override() and not override.is_discrete_sweep():
            raise UserError(
                f"{override.input_line}: the basic sweeper takes lists, range() and choice(); use "
                "an Optuna search (hparams_search=...) for intervals"
            )


def check_sweep_dirs(sweep_dir: str, planned: list[Job]) -> None:
    """Refuse a sweep whose jobs share a directory (one would overwrite another's files), or one into a
    directory that holds another sweep (its tables would mix the two)."""
    seen = {}
    for job in planned:
        where = None if job.run_dir is None else os.path.normpath(job.run_dir)
        if where in seen:
            raise UserError(
                f"hydra.sweep.subdir: the jobs '{' '.join(seen[where])}' and '{' '.join(job.overrides)}' both write "
                f"to {job.run_dir}; give every job its own directory (e.g. hydra.sweep.subdir=${{hydra.job.num}})"
            )
        if where is not None:
            seen[where] = job.overrides
    earlier = read_plan(sweep_dir)  # written by an earlier call into this directory
    if earlier is not None and earlier != [job.overrides for job in planned]:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir!r} holds another sweep ({len(earlier)} jobs, not these {len(planned)}): "
            "choose another hydra.sweep.dir, or run that sweep's very command again to resume it"
        )


def plan_reuse(planned: list[Job]) -> None:
    """A job whose result key (config.result_key) equals an earlier job's cannot give other results: it
    reuses the earlier job's (its directory, absolute), e.g. alpha=1 jobs that differ only in T."""
    first = {}
    for job in planned:
        job_dir = None if job.run_dir is None else str(job.run_dir.resolve())
        owner = first.setdefault(result_key(job.cfg), job_dir)
        if owner is not None and job_dir is not None and owner != job_dir:
            job.reuse_from = owner
