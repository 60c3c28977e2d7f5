"""kd-run's sweeper (`hydra/sweeper=kd`, the default in conf/hydra/default.yaml): Hydra's basic sweep whose
jobs are composed once and all checked before anything is written.

Hydra's BasicSweeper expands the jobs (the cartesian product of `hydra.sweeper.params` and the sweep
overrides: `split_arguments`), then composes every job again to validate the batch, and its launcher
composes it once more. Here each job is composed once (`load_sweep_config`), typed and checked with its
directory; a mistake in any job stops the sweep with one line before anything is written. The launcher
then runs the checked configs (`jobs.PlannedJobs`, keyed by job number) and hands back each job's exit
code; jobs of an equal result key reuse the first one's results, planned here, in memory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from omegaconf import OmegaConf, open_dict

from kd_runner.cli import compose, jobs
from kd_runner.cli.compose import Job
from kd_runner.config import result_key
from kd_runner.errors import UserError
from kd_runner.runtime import interrupt
from kd_runner.runtime.process import launched_rank, launched_world_size
from kd_runner.sweep.aggregate import read_plan, write_plan


@dataclass
class KdSweeperConf:
    _target_: str = compose.KD_SWEEPER
    max_batch_size: int | None = None
    params: dict[str, str] | None = None


class KdSweeper(Sweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None):
        self.max_batch_size, self.params = max_batch_size, params or {}
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
        compose.sweep_directory(self.config.hydra)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        params = [f"{key}={value}" for key, value in self.params.items()]
        overrides = parser.parse_overrides([*params, *arguments])
        check_discrete(overrides)
        (expanded,) = BasicSweeper.split_arguments(overrides, None)  # Hydra's own cartesian product
        planned = [self.compose_job(num, overrides) for num, overrides in enumerate(expanded)]
        compose.name_sweep_jobs(planned)
        check_sweep_dirs(self.config.hydra.sweep.dir, planned)
        plan_reuse(planned)
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
        launcher = Plugins.instance().instantiate_launcher(
            hydra_context=self.hydra_context, task_function=jobs.PlannedJobs(planned), config=self.config
        )
        codes = []
        with interrupt.graceful_stop():
            try:
                for batch in BasicSweeper.split_overrides_to_chunks(planned, self.max_batch_size):
                    returns = launcher.launch([job.overrides for job in batch], initial_job_idx=batch[0].num)
                    codes += [r.return_value for r in returns]  # a job's exception is raised here
            finally:
                all_completed = finish_sweep(sweep_dir)
        return jobs.sweep_exit_code(codes, all_completed)


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
