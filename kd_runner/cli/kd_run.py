"""The `kd-run` command: its arguments, one run or a sweep through Hydra, and its exit code.

Every job of the call (one, or each point of a `-m` sweep or a `sweep=` preset) is composed once and
checked before Hydra writes anything for it (compose.py; a sweep's jobs by kd-run's sweeper, sweeper.py),
so a mistake costs one line on stderr, exit code 2 and no files. Then Hydra runs the jobs with their
checked configs (jobs.py). A sweeper that picks its jobs as it runs (Optuna's, `hparams_search=`) has each
checked as it starts. Exit codes: see jobs.py; tracebacks only with HYDRA_FULL_ERROR=1.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import hydra
from hydra._internal.callbacks import Callbacks
from hydra.core.utils import run_job
from hydra.errors import HydraException
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig

import kd_runner
from kd_runner.cli import compose, jobs
from kd_runner.cli.jobs import JobStopped
from kd_runner.errors import RunInterrupted, UserError
from kd_runner.runtime import interrupt
from kd_runner.runtime.process import launched_rank, launched_world_size
from kd_runner.sweep import search

# Hydra's flags that print something and run no job: they go straight to Hydra (long and short forms)
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")
COMPLETION_COMMANDS = ("install=", "uninstall=", "query=")  # what Hydra's --shell-completion does, e.g. install=bash


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    sys.argv = [sys.argv[0], *argv]  # what result.json records as the command (and what Hydra parses)
    interrupt.exit_on_signal("kd-run")  # a signal before or after the run: exit 75 at once, one line
    compose.register()
    if any(a.split("=", 1)[0] in INFO_FLAGS for a in argv):  # --help, --cfg, ...: Hydra prints, no job runs
        return print_only(argv)
    try:
        with compose.hydra_session() as session:
            code = run_call(session, argv)
    except HydraException as exc:
        jobs.fail(UserError(compose.hydra_message(exc)))
    except UserError as exc:
        jobs.fail(exc)
    except JobStopped as stopped:  # stops a whole sweep too; its tables are still written
        jobs.fail(stopped.error, label=f"interrupted by {stopped.signal}", hint=stopped.hint)
    except KeyboardInterrupt as exc:  # a second signal, or one a job's process did not survive: last checkpoint kept
        second = isinstance(exc, interrupt.StopNow)
        how = "at once by a second signal" if second else f"by {interrupt.requested() or 'a signal'}"
        print(f"kd-run: stopped {how}; run the same command again to resume from the last checkpoint", file=sys.stderr)
        sys.exit(RunInterrupted.exit_code)
    if code:
        sys.exit(code)


def print_only(argv: list[str]) -> None:
    """--version here; the other flags that only print (--help, --cfg, --info, ...) through Hydra's own
    command line."""
    if "--version" in argv:
        print(version_line())
        return
    check_completion(argv)
    check_info_values(argv)
    hydra_command_line()


@hydra.main(version_base="1.3", config_path="pkg://" + compose.CONFIG_MODULE, config_name=compose.CONFIG_NAME)
def hydra_command_line(_cfg: DictConfig) -> None:
    """Hydra's command line, given only flags that print: it never runs a job."""


def version_line() -> str:
    """kd-runner's version and those of torch (read from its metadata: importing it takes seconds) and Hydra."""
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "not installed"
    return f"kd-runner {kd_runner.__version__} (torch {torch_version}, Hydra {hydra.__version__})"


def check_completion(argv: list[str]) -> None:
    """`--shell-completion` (`-sc`) needs what to do; without it Hydra raises a traceback."""
    if not {"--shell-completion", "-sc"} & set(argv) or any(a.startswith(COMPLETION_COMMANDS) for a in argv):
        return
    jobs.fail(
        UserError(
            "--shell-completion needs what to do: install=SHELL or uninstall=SHELL (bash, zsh or fish), "
            'e.g. eval "$(kd-run --shell-completion install=bash)"'
        )
    )


INFO_VALUES = {  # what the printing flags take (Hydra's argparse would answer with its whole usage, internal flags too)
    "--cfg": ("job", "hydra", "all"),
    "-c": ("job", "hydra", "all"),
    "--info": ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath"),
    "-i": ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath"),
}


def check_info_values(argv: list[str]) -> None:
    """A printing flag with a value it does not take is one line naming what it takes (`--info` may stand alone;
    `--help`, `--hydra-help`, `--shell-completion` take none)."""
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in INFO_VALUES:
            value = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
            alone = flag in ("--info", "-i") and not eq and (not value or value.startswith("-"))
            if not alone and value not in INFO_VALUES[flag]:
                allowed = ", ".join(INFO_VALUES[flag])
                wrong = f"{flag} {value} is not allowed" if value else f"{flag} needs what to print"
                jobs.fail(UserError(f"{wrong}: one of: {allowed} (e.g. {flag} {INFO_VALUES[flag][0]})"))
        elif flag in INFO_FLAGS and eq:
            jobs.fail(UserError(f"{arg} is not allowed: {flag} takes no value"))


def run_call(session, argv: list[str]) -> int:
    """The call's jobs, composed once and checked, then run; its exit code."""
    rest, search_path = config_dir_override(argv)
    overrides = job_overrides(rest) + search_path
    call = compose.call_config(session, overrides, multirun="-m" in rest or "--multirun" in rest)
    if call.hydra.mode == RunMode.RUN:
        return single(session, call)
    overrides.append("hydra.mode=MULTIRUN")
    if call.hydra.sweeper._target_ == compose.KD_SWEEPER:
        return session.multirun(compose.CONFIG_NAME, jobs.StartedJobs(), overrides) or 0
    return picked_as_it_runs(session, call, overrides)


def config_dir_override(argv: list[str]) -> tuple[list[str], list[str]]:
    """`argv` without `--config-dir DIR` (`-cd DIR`, `--config-dir=DIR`), and the override that puts DIR on
    the search path as Hydra does, so the user's config groups compose too."""
    rest, dirs, args = [], [], iter(argv)
    for arg in args:
        if arg in ("--config-dir", "-cd"):
            dirs.append(next(args, ""))
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    paths = ", ".join(compose.quoted("file://" + os.path.abspath(d)) for d in dirs)
    return rest, [f"hydra.searchpath=[{paths}]"] if dirs else []


def job_overrides(argv: list[str]) -> list[str]:
    """The overrides of a call that runs jobs; a Hydra flag kd-run cannot check is refused, so no job
    ever runs (or writes) unchecked."""
    flags = [a.split("=", 1)[0] for a in argv if a.startswith("-") and a not in ("-m", "--multirun")]
    if flags:
        info = ", ".join(f for f in INFO_FLAGS if f.startswith("--"))
        raise UserError(
            f"{flags[0]} is not supported by kd-run: it runs jobs of its own config (conf/config.yaml) given "
            f"overrides and -m/--multirun; these flags only print: {info}"
        )
    return [a for a in argv if a not in ("-m", "--multirun")]


def single(session, call: DictConfig) -> int:
    """One job: composed once (the call's config), checked, then Hydra's run of it (its directory, .hydra/
    and log) with the checked config."""
    job = compose.checked_job(call, 0, multirun=False)
    if launched_rank() > 0:  # another torchrun process: rank 0's job, writing nothing
        return jobs.follow([job])
    with interrupt.graceful_stop():
        return run_single(session, call, job)


def run_single(session, call: DictConfig, job: compose.Job) -> int:
    """What Hydra's own run does (its callbacks, then run_job: the run directory, .hydra/, the log), with
    the task function given the checked job; its exit code."""
    callbacks = Callbacks(call)
    callbacks.on_run_start(config=call, config_name=compose.CONFIG_NAME)
    ret = run_job(
        hydra_context=HydraContext(config_loader=session.config_loader, callbacks=callbacks),
        task_function=jobs.OneJob(job),
        config=call,
        job_dir_key="hydra.run.dir",
        job_subdir_key=None,
    )
    callbacks.on_run_end(config=call, config_name=compose.CONFIG_NAME, job_return=ret)
    return jobs.exit_code(ret.return_value)  # a run's error is raised here


def picked_as_it_runs(session, call: DictConfig, overrides: list[str]) -> int:
    """A sweep whose sweeper picks the jobs as it runs (Optuna's): each job is checked as it starts. Its
    directory is pinned, so that a resume finds it (and an Optuna search its study); the tables and plots
    are written also when it stops early."""
    from kd_runner.cli.sweep_tools import finish_sweep  # plots (matplotlib): imported only by a sweep

    if launched_world_size() > 1:
        raise UserError("a search is not allowed under torchrun: its jobs are not known in advance")
    sweep_dir = compose.sweep_directory(call.hydra)
    given = compose.dir_given(call.hydra, "hydra.sweep.dir")
    pinned = [] if given else [f"hydra.sweep.dir={compose.quoted(sweep_dir)}"]
    if call.hydra.sweeper._target_.endswith("OptunaSweeper"):
        check_no_seed_search(call, overrides)
        check_study_settings(call.hydra.sweeper, call.optimize_metric)
        Path(sweep_dir).mkdir(parents=True, exist_ok=True)
        search.claim(sweep_dir, search_identity(call, overrides))
        pinned += study_overrides(call, sweep_dir)
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    print(f"kd-run: search into {sweep_dir}; each trial's log is in its own directory")
    trials = jobs.StartedJobs()
    with interrupt.graceful_stop():
        try:
            search_trials(session, trials, [*overrides, *pinned], sweep_dir)
        finally:
            all_completed = finish_sweep(Path(sweep_dir))
    return jobs.sweep_exit_code(trials.exit_codes, all_completed)


def search_trials(session, trials: jobs.StartedJobs, overrides: list[str], sweep_dir: str) -> None:
    """The sweeper's trials. A trial whose runs did not all complete is a FAIL in the study; the search stops
    early only when the user's hydra.sweeper.max_failure_rate says so (one line), and a search none of whose
    trials completed ends with its tables, where Hydra's Optuna sweeper would ask the study for its best."""
    try:
        session.multirun(compose.CONFIG_NAME, trials, overrides)
    except search.TrialFailed as exc:
        print(
            f"kd-run: the search stopped: a trial failed ({exc}), more than hydra.sweeper.max_failure_rate allows",
            file=sys.stderr,
        )
    except ValueError:
        if Path(sweep_dir, search.STUDY_DB).is_file() and search.completed_trials(sweep_dir) == 0:
            print("kd-run: no trial of the search completed: no best parameters", file=sys.stderr)
        else:
            raise


def search_identity(call: DictConfig, overrides: list[str]) -> dict:
    """What a search is: its overrides (Hydra's own aside: n_trials may grow on a resume), the searched
    parameters and its goal. The same command gives the same identity."""
    sweeper = call.hydra.sweeper
    return {
        "overrides": sorted(o for o in overrides if not o.lstrip("+~").startswith(("hydra.", "hydra/"))),
        "params": {str(key): str(value) for key, value in (sweeper.get("params") or {}).items()},
        "direction": str(sweeper.direction),
        "optimize_metric": call.optimize_metric,
    }


def check_no_seed_search(call: DictConfig, overrides: list[str]) -> None:
    """A search never tunes the seed: swept on the command line or in the preset's params, Optuna would take it
    as a hyperparameter and report the luckiest seed as the best setting."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    swept = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override()]
    params = [f"{key}={value}" for key, value in (call.hydra.sweeper.get("params") or {}).items()]
    for line in [*swept, *params]:
        if line.lstrip("+~").split("=", 1)[0] == "seed":
            raise UserError(
                f"{line} is not allowed in a search (hparams_search=...): the seed is not a hyperparameter; "
                "use seeds_per_trial=N (each trial runs seeds seed..seed+N-1 and scores their mean)"
            )


def check_study_settings(sweeper: DictConfig, metric: str) -> None:
    """Before anything is written: the direction must fit `optimize_metric`, and a search runs a trial at least."""
    search.check_direction(metric, sweeper.direction)
    if not isinstance(sweeper.n_trials, int) or sweeper.n_trials < 1:
        raise UserError(f"hydra.sweeper.n_trials={sweeper.n_trials} is not allowed: expected a whole number >= 1")


def study_overrides(call: DictConfig, sweep_dir: str) -> list[str]:
    """An Optuna search's study in SQLite in the sweep directory, the trials it has left to complete (all of
    `n_trials` when new, fewer when it resumes: search.resume), and a failed trial's FAIL not stopping it."""
    sweeper = call.hydra.sweeper
    left, run = search.resume(sweep_dir, sweeper.n_trials)
    seed = [] if sweeper.sampler.get("seed") is None else [f"hydra.sweeper.sampler.seed={sweeper.sampler.seed + run}"]
    given = compose.dir_given(call.hydra, "hydra.sweeper.max_failure_rate")  # the user's word, else go on
    failures = [] if given else ["hydra.sweeper.max_failure_rate=1.0"]
    return [
        f"hydra.sweeper.storage={compose.quoted(search.storage_url(sweep_dir))}",
        f"hydra.sweeper.study_name={search.STUDY_NAME}",
        f"hydra.sweeper.n_trials={left}",
        *seed,
        *failures,
    ]
