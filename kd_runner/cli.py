"""The `kd-run` entry point: the only module that knows Hydra.

Before Hydra creates any directory, every job of the call (one, or each point of a `-m` sweep or a
`sweep=` preset) is composed and validated, its output directory checked (writable; empty, or holding
a run of this very config), so a mistake costs one line on stderr, exit code 2 and no files. Then Hydra
runs the jobs, each calling `pipeline.run` with the typed config. In a sweep a failing job is recorded in
its result.json instead of stopping the others, and when Hydra returns (or stops) the sweep directory is
aggregated into tables and plots.

Exit codes: 0 done (or skipped: already finished), 1 a bug (or a sweep job that did not complete),
2 a usage error, 3 a run diverged (a sweep finishes its other jobs first), 75 interrupted by
SIGTERM/SIGINT (run the same command again to resume). Tracebacks only with HYDRA_FULL_ERROR=1.

Torch is imported only once a job's config has passed its checks (`pipeline`, imported where a job is
checked or run): --help, --version and a mistake in the config answer without loading it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import itertools
import logging
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

import kd_runner
from kd_runner import methods
from kd_runner.config import RunConfig, load_config
from kd_runner.errors import Diverged, RunInterrupted, UserError, one_line
from kd_runner.groups import register_groups
from kd_runner.runtime import interrupt
from kd_runner.runtime.process import cpu_cores, launched_rank, launched_world_size
from kd_runner.status import Status
from kd_runner.store import rundir
from kd_runner.sweep import search
from kd_runner.sweep.aggregate import job_dirs, planned_reuse, read_plan, reuse_plan, write_plan

CONFIG_MODULE = "kd_runner.conf"
# Hydra's flags that print something and run no job: they go straight to Hydra (long and short forms)
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc")
COMPLETION_COMMANDS = ("install=", "uninstall=", "query=")  # what Hydra's --shell-completion does, e.g. install=bash
log = logging.getLogger("kd_runner")


def register_schema() -> None:
    """Make the typed schema (kd_runner.config.RunConfig) the base of conf/config.yaml, as `kd_schema`, and each
    method's parameters (kd_runner.methods) an option of the `distill` group."""
    store = ConfigStore.instance()
    store.store(name="kd_schema", node=RunConfig(distill=methods.Params()))
    for name, method in methods.METHODS.items():
        store.store(group="distill", name=name, node=method.params_type)
    register_groups(store)


@dataclass
class Plan:
    """What one `kd-run` call will run, known before Hydra writes anything.

    `out_dir` is the run directory (single run) or the sweep directory (multirun), resolved once here and
    passed to Hydra as `dir_key`, so kd-run knows where the call writes; None when it depends on values
    known only once Hydra runs the job.
    """

    multirun: bool
    jobs: list[list[str]] | None  # each job's overrides, in Hydra's order; None: a sweeper picks them as it runs
    configs: list[RunConfig]  # each job's typed config (a search: the config its jobs share)
    dir_key: str  # hydra.run.dir or hydra.sweep.dir
    out_dir: str | None
    dir_given: bool  # set on the command line (then a resume needs the very same command)
    reuse: dict[int, str] = field(default_factory=dict)  # job number -> the job directory whose results it reuses
    search_args: list[str] = field(default_factory=list)  # an Optuna search's study (`search_overrides`)

    def hydra_args(self, argv: list[str]) -> list[str]:
        """The command line for Hydra: the user's, with the output directory pinned to `out_dir`."""
        pinned = [] if self.dir_given or self.out_dir is None else [f"{self.dir_key}={quoted(self.out_dir)}"]
        return [*argv, *pinned, *self.search_args]

    def resume_hint(self) -> str:
        """How to continue: the same command, into the same directory (named if it was a default)."""
        if self.dir_given or self.out_dir is None:
            return "run the same command again to resume"
        return f"run the same command with {self.dir_key}={self.out_dir} to resume"


class JobStopped(BaseException):
    """Carries a job's RunInterrupted (and the signal) out of Hydra, which catches Exceptions, to `main`."""

    def __init__(self, error: RunInterrupted, signal: str | None):
        super().__init__(str(error))
        self.error, self.signal = error, signal

    def __reduce__(self):  # a parallel launcher's worker hands it to the main process, which reports it
        return JobStopped, (self.error, self.signal)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    interrupt.exit_on_signal("kd-run")  # a signal before or after the run: exit 75 at once, one line
    register_schema()
    if any(a.split("=", 1)[0] in INFO_FLAGS for a in argv):  # --help, --cfg, ...: Hydra prints, no job runs
        if "--version" in argv:
            print(version_line())
            return None
        check_completion(argv)
        sys.argv = [sys.argv[0], *argv]
        return hydra_main()
    try:
        rest, search_path = config_dir_override(argv)
        plan = preflight(job_overrides(rest) + search_path, multirun="-m" in rest or "--multirun" in rest)
    except UserError as exc:
        fail(exc)
    if launched_rank() > 0:
        return run_worker(plan.configs)
    sys.argv = [sys.argv[0], *plan.hydra_args(argv)]
    try:
        with interrupt.graceful_stop():
            code = run_sweep(plan) if plan.multirun else run_single()
    except JobStopped as stopped:  # stops a whole sweep too; its tables are still written
        fail(stopped.error, label=f"interrupted by {stopped.signal}", hint=plan.resume_hint())
    except KeyboardInterrupt as exc:  # a second signal, or one a job's process did not survive: last checkpoint kept
        second = isinstance(exc, interrupt.StopNow)
        how = "at once by a second signal" if second else f"by {interrupt.requested() or 'a signal'}"
        print(f"kd-run: stopped {how}; run the same command again to resume from the last checkpoint", file=sys.stderr)
        sys.exit(RunInterrupted.exit_code)
    if code:
        sys.exit(code)


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
    fail(
        UserError(
            "--shell-completion needs what to do: install=SHELL or uninstall=SHELL (bash, zsh or fish), "
            'e.g. eval "$(kd-run --shell-completion install=bash)"'
        )
    )


def config_dir_override(argv: list[str]) -> tuple[list[str], list[str]]:
    """`argv` without `--config-dir DIR` (`-cd DIR`, `--config-dir=DIR`), and the override that puts DIR on
    the compose search path as Hydra does, so the preflight sees the user's config groups too."""
    rest, dirs, args = [], [], iter(argv)
    for arg in args:
        if arg in ("--config-dir", "-cd"):
            dirs.append(next(args, ""))
        elif arg.startswith("--config-dir="):
            dirs.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    paths = ", ".join(quoted("file://" + os.path.abspath(d)) for d in dirs)
    return rest, [f"hydra.searchpath=[{paths}]"] if dirs else []


def job_overrides(argv: list[str]) -> list[str]:
    """The overrides of a call that runs jobs; a Hydra flag the preflight cannot check is refused, so no job
    ever runs (or writes) unchecked."""
    flags = [a.split("=", 1)[0] for a in argv if a.startswith("-") and a not in ("-m", "--multirun")]
    if flags:
        info = ", ".join(f for f in INFO_FLAGS if f.startswith("--"))
        raise UserError(
            f"{flags[0]} is not supported by kd-run: it runs jobs of its own config (conf/config.yaml) given "
            f"overrides and -m/--multirun; these flags only print: {info}"
        )
    return [a for a in argv if a not in ("-m", "--multirun")]


def run_single() -> int:
    hydra_main()
    return 0


def run_sweep(plan: Plan) -> int:
    """Hydra's multirun, then the sweep's tables and plots, also when it stopped early (Hydra skips its own
    end-of-multirun hook then). Returns the exit code: the worst job's (see `job_exit_code`), at least 1
    when a job did not complete."""
    from kd_runner.sweep.cli import finish_sweep  # plots (matplotlib): imported only by a sweep

    sweep_dir = Path(plan.out_dir)
    if plan.jobs is None:  # a search: no plan, but the sweep directory holds its study
        sweep_dir.mkdir(parents=True, exist_ok=True)
        print(f"kd-run: search into {sweep_dir}; each trial's log is in its own directory")
    else:  # shows the jobs an interrupted sweep never ran, and which jobs reuse another's results
        write_plan(sweep_dir, [task_overrides(job) for job in plan.jobs], plan.reuse)
        print(f"kd-run: sweep of {len(plan.jobs)} jobs into {sweep_dir}; each job's log is in its own directory")
    try:
        hydra_main()
    finally:
        all_completed = finish_sweep(sweep_dir)
    worst = max([job_exit_code(job) for job in job_dirs(sweep_dir)], default=0)
    return worst if all_completed else max(worst, 1)


def task_overrides(job: list[str]) -> list[str]:
    """A job's overrides without Hydra's own (`hydra.*`, `hydra/...`), as Hydra records them in overrides.yaml."""
    return [o for o in job if not o.lstrip("+~").startswith(("hydra.", "hydra/"))]


def job_exit_code(job_dir: Path) -> int:
    """The exit code a job's result.json records (0 when it completed or holds none)."""
    record = rundir.previous_record(job_dir) or {}
    return int(record.get("exit_code", 0))


def run_worker(configs: list[RunConfig]) -> None:
    """A torchrun process other than rank 0: it computes its part of every job, in the order rank 0's Hydra
    runs them, and writes nothing (no run directory, no logs). A job that fails or diverges is recorded
    by rank 0; like rank 0, a worker goes on with the next job of a sweep. An interruption ends it."""
    from kd_runner import pipeline
    from kd_runner.runtime import distributed

    failed = None
    try:
        with interrupt.graceful_stop():
            for cfg, _ in (run for job in configs for run in search.trial_runs(job, Path())):  # as hydra_main
                try:
                    pipeline.run(cfg, None)
                except (UserError, distributed.MainFailed) as exc:
                    failed = exc
    except RunInterrupted as exc:
        fail(exc, label=f"interrupted by {interrupt.requested()}")
    except KeyboardInterrupt:
        sys.exit(RunInterrupted.exit_code)
    if isinstance(failed, UserError) and len(configs) == 1:
        fail(failed)


def fail(exc: Exception, label: str = "error", hint: str = "") -> None:
    """One line on stderr and the error's exit code; the full traceback only with HYDRA_FULL_ERROR=1."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    print(f"kd-run: {label}: {exc}" + (f"; {hint}" if hint else ""), file=sys.stderr)
    sys.exit(exc.exit_code)


def quoted(value: str) -> str:
    """`value` as a quoted Hydra override value (commas, spaces and brackets stay literal)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def sweep_jobs(hydra_cfg: DictConfig, overrides: list[str]) -> list[list[str]] | None:
    """The jobs of a multirun as Hydra's basic sweeper makes them: the cartesian product of the config's
    sweep params (`hydra.sweeper.params`, e.g. from a preset) and the overrides, which win on the same key.
    None when another sweeper (Optuna's) picks the jobs as it runs: they are checked as they start."""
    if hydra_cfg.sweeper._target_.rsplit(".", 1)[-1] != "BasicSweeper":
        return None
    params = [f"{key}={value}" for key, value in (hydra_cfg.sweeper.params or {}).items()]
    choices = {}  # key -> its "key=value" overrides, in first-mention order
    for override in OverridesParser.create().parse_overrides(params + overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise UserError(
                f"{override.input_line}: the basic sweeper takes lists, range() and choice(); use "
                "an Optuna search (hparams_search=...) for intervals"
            )
    return [list(job) for job in itertools.product(*choices.values())]


def preflight(overrides: list[str], multirun: bool) -> Plan:
    """Compose and validate every job's config and output directory (pipeline.check_job); raise UserError
    with one line on the first mistake. A call is a multirun with `-m`, or with a preset such as
    `sweep=alpha` that sets `hydra.mode`; a multirun's jobs are those of `sweep_jobs`."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    try:
        fixed = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            hydra_cfg = compose("config", overrides=fixed, return_hydra_config=True).hydra
            multirun = multirun or hydra_cfg.mode == RunMode.MULTIRUN
            dir_key, out_dir = output_directory(hydra_cfg, multirun)
            jobs = sweep_jobs(hydra_cfg, overrides) if multirun else [overrides]
            check_launcher(hydra_cfg, multirun, jobs is not None)
            pinned = [] if out_dir is None else [f"{dir_key}={quoted(out_dir)}"]
            composed = [  # a search's jobs are checked as they start; here, what they share
                compose_job(compose, [*job, *pinned, f"hydra.job.num={num}"], multirun, known=jobs is not None)
                for num, job in enumerate(jobs or [fixed])
            ]
    except HydraException as exc:
        raise UserError(hydra_message(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    dir_given = any(o.lstrip("+").startswith(dir_key + "=") for o in overrides)
    configs = [cfg for cfg, _ in composed]
    if multirun and jobs is not None:
        check_sweep_dirs(out_dir, [task_overrides(job) for job in jobs], [job_dir for _, job_dir in composed])
    plan = Plan(multirun, jobs, configs, dir_key, out_dir, dir_given, reuse_plan(composed) if multirun else {})
    if hydra_cfg.sweeper._target_.endswith("OptunaSweeper"):
        plan.search_args = search_overrides(hydra_cfg.sweeper, configs[0], out_dir)
    return plan


def search_overrides(sweeper: DictConfig, cfg: RunConfig, sweep_dir: str) -> list[str]:
    """An Optuna search's study in SQLite in the sweep directory, and the trials it has left to complete (all
    of `n_trials` when new, fewer when it resumes: search.resume); its direction must fit `optimize_metric`."""
    search.check_direction(cfg.optimize_metric, sweeper.direction)
    left, run = search.resume(sweep_dir, sweeper.n_trials)
    seed = [] if sweeper.sampler.get("seed") is None else [f"hydra.sweeper.sampler.seed={sweeper.sampler.seed + run}"]
    return [
        f"hydra.sweeper.storage={quoted(search.storage_url(sweep_dir))}",
        f"hydra.sweeper.study_name={search.STUDY_NAME}",
        f"hydra.sweeper.n_trials={left}",
        *seed,
    ]


def check_sweep_dirs(sweep_dir: str, jobs: list[list[str]], job_dirs: list[str | None]) -> None:
    """Refuse a sweep whose jobs share a directory (one would overwrite another's files), or one into a
    directory that holds another sweep (its tables would mix the two)."""
    seen = {}
    for job, job_dir in zip(jobs, job_dirs):
        where = None if job_dir is None else os.path.normpath(job_dir)
        if where in seen:
            raise UserError(
                f"hydra.sweep.subdir: the jobs '{' '.join(seen[where])}' and '{' '.join(job)}' both write to "
                f"{job_dir}; give every job its own directory (e.g. hydra.sweep.subdir=${{hydra.job.num}})"
            )
        if where is not None:
            seen[where] = job
    planned = read_plan(sweep_dir)
    if planned is not None and planned != jobs:
        raise UserError(
            f"hydra.sweep.dir={sweep_dir!r} holds another sweep ({len(planned)} jobs, not these {len(jobs)}): "
            "choose another hydra.sweep.dir, or run that sweep's very command again to resume it"
        )


def compose_job(compose, overrides: list[str], multirun: bool, known: bool) -> tuple[RunConfig, str | None]:
    """One job's typed config, checked with its output directory (pipeline.check_job; not `known` in
    advance: without one), and that directory."""
    composed = compose("config", overrides=overrides, return_hydra_config=True)
    key, job_dir = job_directory(composed.hydra, multirun) if known else ("hydra.sweep.dir", None)
    with open_dict(composed):
        hydra_cfg = composed.pop("hydra")
    if hydra_cfg.job.chdir:  # the job would read relative paths from its run directory, the preflight from here
        raise UserError(
            "hydra.job.chdir=true is not supported: kd-run reads relative paths (dataset.root, teacher.checkpoint, "
            "cache_dir, ...) from the directory it starts in and writes into hydra.run.dir without it"
        )
    cfg = job_config(composed, hydra_cfg, multirun)
    from kd_runner import pipeline  # after the config's checks: a mistake in it is found without torch

    pipeline.check_job(cfg, job_dir, dir_key=key, processes=launched_world_size())
    return cfg, job_dir


def job_config(raw: DictConfig, hydra_cfg: DictConfig, multirun: bool) -> RunConfig:
    """A job's typed config. Under a parallel launcher `threads=0` (all cores) becomes the job's share of
    the cores, so parallel jobs do not oversubscribe them and record the thread count they computed with.
    A sweep's jobs are one group in the trackers (logger.group): the sweep directory, unless given."""
    values = OmegaConf.to_container(raw, resolve=True)
    if multirun and values.get("threads") == 0 and "n_jobs" in hydra_cfg.launcher:
        values["threads"] = parallel_threads(hydra_cfg.launcher.n_jobs, cpu_cores())
    if multirun and values.get("logger", {}).get("group") is None:
        values.setdefault("logger", {})["group"] = str(hydra_cfg.sweep.dir)
    return load_config(values)


def parallel_threads(n_jobs: int | None, cores: int) -> int:
    """Each job's threads when `n_jobs` jobs run at once (joblib's count: -1 all cores, -2 all but one)."""
    parallel = n_jobs if n_jobs and n_jobs > 0 else max(1, cores + 1 + (n_jobs or -cores))
    return max(1, cores // parallel)


def check_launcher(hydra_cfg: DictConfig, multirun: bool, known: bool) -> None:
    """Under torchrun every process runs the jobs one after another: only the basic launcher can do that,
    and only with jobs known in advance."""
    launcher = hydra_cfg.launcher._target_.rsplit(".", 1)[-1]
    if launched_world_size() > 1 and multirun and launcher != "BasicLauncher":
        raise UserError(
            f"hydra/launcher={launcher} is not allowed under torchrun: every process runs the "
            "jobs one after another; use the default launcher"
        )
    if launched_world_size() > 1 and not known:
        raise UserError("a search is not allowed under torchrun: its jobs are not known in advance")


def output_directory(hydra_cfg: DictConfig, multirun: bool) -> tuple[str, str | None]:
    """The key that sets where the call writes (run or sweep directory) and that directory, resolved;
    None for a run directory that depends on values known only once Hydra runs the job."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        return key, str(hydra_cfg.sweep.dir if multirun else hydra_cfg.run.dir)
    except OmegaConfBaseException:
        if multirun:
            raise UserError(
                f"{key} must not depend on a job's values: it is the one directory of the whole sweep"
            ) from None
        return key, None


def job_directory(hydra_cfg: DictConfig, multirun: bool) -> tuple[str, str | None]:
    """The key that sets a job's output directory and that directory (None where it depends on values
    known only once Hydra runs the job, such as hydra.job.id; pipeline.run checks it then)."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        if multirun:
            return key, os.path.join(hydra_cfg.sweep.dir, str(hydra_cfg.sweep.subdir))
        return key, hydra_cfg.run.dir
    except OmegaConfBaseException:
        return key, None


def hydra_message(exc: HydraException) -> str:
    """Hydra's multi-line composition errors as one line that names the key and what is allowed."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and exc.options:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        return f"{group}={option!r} is not allowed: one of: {', '.join(sorted(exc.options))}"
    if isinstance(exc, OverrideParseException):  # e.g. unquoted characters outside Hydra's grammar (é, spaces)
        return (
            f"cannot parse the override {exc.override!r}: check its syntax; a value with characters other than "
            "ASCII letters, digits, _ - . / must be quoted, e.g. 'dataset.root=\"données\"' in the shell"
        )
    cause = exc.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and dataclasses.is_dataclass(cause.object_type):
        known = ", ".join(f.name for f in dataclasses.fields(cause.object_type))  # e.g. a method's parameters
        return f"{cause.full_key} is not allowed: unknown key; known keys here: {known}"
    if cause is not None and hasattr(cause, "full_key"):
        reason = str(cause).strip().splitlines()[0]
        return f"{cause.full_key}: {reason}"
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return "; ".join(lines[:2]) if lines else type(exc).__name__


@hydra.main(version_base="1.3", config_path="pkg://" + CONFIG_MODULE, config_name="config")
def hydra_main(raw: DictConfig) -> float | None:
    """One job: its runs (one, or a search trial's seeds) and the value a sweeper optimizes."""
    job = HydraConfig.get()
    run_dir = Path(job.runtime.output_dir)
    multirun = job.mode == RunMode.MULTIRUN
    if multirun:  # a sweep job's INFO lines and summary go to its own log; the console gets one line per run
        for handler in logging.getLogger().handlers:
            if not isinstance(handler, logging.FileHandler):
                handler.setLevel(logging.WARNING)
    cfg = start_job(raw, run_dir, multirun)
    if not interrupt.active():  # a parallel launcher's worker process: Ctrl-C reaches it too
        with interrupt.graceful_stop():
            return _run_trial(cfg, job, run_dir, multirun)
    return _run_trial(cfg, job, run_dir, multirun)


def _run_trial(cfg: RunConfig, job, run_dir: Path, multirun: bool) -> float | None:
    """The job's runs (one, or a search trial's seeds) and the value a sweeper optimizes."""
    runs = search.trial_runs(cfg, run_dir)
    reuse_from = planned_reuse(job.sweep.dir, job.job.num) if multirun and len(runs) == 1 else None
    label = (job.job.num, list(job.overrides.task)) if multirun else None
    records = [run_job(job_cfg, job_dir, reuse_from, label) for job_cfg, job_dir in runs]
    return search.trial_value(cfg, records)


def start_job(raw: DictConfig, run_dir: Path, multirun: bool) -> RunConfig:
    """The job's typed config. A sweep's job is checked again as it starts, for sweepers that pick jobs as
    they run (Optuna): a mistake stops the sweep with one line and exit 2, and the job's directory (only
    Hydra's .hydra/ and log so far) is removed."""
    from kd_runner import pipeline

    try:
        cfg = job_config(raw, HydraConfig.get(), multirun)
        if multirun:
            pipeline.check_job(cfg, run_dir, dir_key="hydra.sweep.dir", processes=launched_world_size())
        return cfg
    except UserError as exc:
        if not (run_dir / rundir.RESULT).exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        fail(exc)


def run_job(cfg: RunConfig, run_dir: Path, reuse_from: str | None, label: tuple | None) -> dict | None:
    """One run; in a sweep (`label`: the job's number and overrides), a failed or diverged run is recorded
    (result.json) and the sweep goes on, and the console gets one line for the run."""
    from kd_runner.store.results import job_line

    if label is None:
        return _run(cfg, run_dir, False, reuse_from)
    skipped = (rundir.previous_record(run_dir) or {}).get("status") in rundir.FINISHED
    try:
        return _run(cfg, run_dir, True, reuse_from)
    finally:
        print(job_line(*label, rundir.previous_record(run_dir) or {}, skipped), flush=True)


def _run(cfg: RunConfig, run_dir: Path, multirun: bool, reuse_from: str | None) -> dict | None:
    from kd_runner import pipeline
    from kd_runner.store.results import summary

    try:
        record = pipeline.run(cfg, run_dir, reuse_from=reuse_from)
    except RunInterrupted as exc:
        raise JobStopped(exc, interrupt.requested()) from None
    except Exception as exc:
        if not multirun:
            if isinstance(exc, UserError):
                fail(exc)
            raise
        # recorded in its result.json by pipeline.run; the other jobs of the sweep go on
        log.error("job failed: %s", one_line(exc), exc_info=not isinstance(exc, UserError))
        return None
    if record["status"] == Status.DIVERGED:  # recorded in result.json; the other jobs of a sweep go on
        print(f"kd-run: diverged: {record['message']} ({run_dir})", file=sys.stderr)
        if not multirun:
            sys.exit(Diverged.exit_code)
        return record
    if multirun:
        log.info("%s", summary(record, run_dir))
    else:
        print(summary(record, run_dir))
    return record
