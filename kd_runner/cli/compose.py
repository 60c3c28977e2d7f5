"""Hydra's config for kd-run: the call's config, and each job's typed config, composed once and checked.

A job is checked (kd_runner.run.check_job) right after Hydra composes it and before Hydra writes anything
for it, so a mistake costs one line on stderr, exit code 2 and no files. Torch is imported only once a
job's config has passed its own checks: --help, --version and a mistake in the config answer without it.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hydra import initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from kd_runner import methods
from kd_runner.cli.groups import register_groups
from kd_runner.config import RunConfig, load_config
from kd_runner.errors import UserError
from kd_runner.runtime.process import cpu_cores, launched_world_size, omp_threads
from kd_runner.sweep.search import trial_dir_name
from kd_runner.user_code import Target

CONFIG_MODULE = "kd_runner.conf"
CONFIG_NAME = "config"
KD_SWEEPER = "hydra_plugins.kd_runner_sweeper.KdSweeper"  # hydra/sweeper=kd, kd_runner.cli.sweeper
SWEEPS = "outputs/sweeps"  # where conf/hydra/default.yaml puts a sweep's directory


def register() -> None:
    """Make the typed schema (kd_runner.config.RunConfig) the base of conf/config.yaml, as `kd_schema`, each
    method's parameters (kd_runner.methods) an option of the `distill` group, the registered networks and
    datasets options of their groups (kd_runner.cli.groups), and kd-run's sweeper the option
    `hydra/sweeper=kd` (conf/hydra/default.yaml selects it), and the resolver `kd_trial_dir` that names a
    search's trial directories (kd_runner.sweep.search.trial_dir_name). The sweeper is registered by hand: an editable
    install's hydra_plugins package is not one Hydra's scan can list (and after the scan, which runs the
    plugin modules it finds again)."""
    plugins = Plugins.instance()
    from hydra_plugins.kd_runner_sweeper import KdSweeper
    from kd_runner.cli.sweeper import KdSweeperConf

    store = ConfigStore.instance()
    store.store(name="kd_schema", node=RunConfig(distill=methods.Params()))  # any method's Params merge into it
    for name, method in methods.METHODS.items():
        store.store(group="distill", name=name, node=method.params_type)
    register_groups(store)
    store.store(group="hydra/sweeper", name="kd", node=KdSweeperConf)
    plugins.register(KdSweeper)
    OmegaConf.register_new_resolver("kd_trial_dir", trial_dir_name, replace=True)


@contextmanager
def hydra_session() -> Iterator:
    """Hydra initialised on kd-run's configs (conf/, the package kd_runner.conf), as `hydra.main` does."""
    with initialize_config_module(config_module=CONFIG_MODULE, job_name="kd-run", version_base="1.3"):
        yield GlobalHydra.instance().hydra


def call_config(hydra, overrides: list[str], multirun: bool) -> DictConfig:
    """The call's config: a single run's own config (its job), or a multirun's (for -m, or a preset such as
    `sweep=alpha` that sets hydra.mode), whose jobs the sweeper composes. hydra.mode says which."""
    sweeps = multirun or any(o.is_sweep_override() for o in OverridesParser.create().parse_overrides(overrides))
    mode = RunMode.MULTIRUN if sweeps else RunMode.RUN
    cfg = hydra.compose_config(CONFIG_NAME, overrides, run_mode=mode, with_log_configuration=True)
    if sweeps and not multirun and cfg.hydra.mode != RunMode.MULTIRUN:  # Hydra's one line: "add -m"
        hydra.compose_config(CONFIG_NAME, overrides, run_mode=RunMode.RUN)
    with read_write(cfg.hydra):
        cfg.hydra.mode = RunMode.MULTIRUN if multirun else cfg.hydra.mode or RunMode.RUN
    return cfg


@dataclass
class Job:
    """One job, composed and checked: its typed config, where it runs, and what the sweep records of it."""

    num: int
    cfg: RunConfig
    run_dir: Path | None  # None: depends on values known only once Hydra runs it (checked then)
    overrides: list[str]  # its command-line overrides, as Hydra records them (hydra.overrides.task)
    finished: bool = False  # its directory holds this config's finished run: the run is skipped
    reuse_from: str | None = None  # an earlier job's directory whose results it reuses (equal result key)
    config: DictConfig | None = None  # as Hydra composed it (its own config included): what its launch runs


def checked_job(config: DictConfig, num: int, multirun: bool) -> Job:
    """A composed job (Hydra's config included) as a typed, checked Job; UserError (one line) if it
    cannot run here."""
    hydra_cfg = config.hydra
    if hydra_cfg.job.chdir:  # the job would read relative paths from its run directory, the checks from here
        raise UserError(
            "hydra.job.chdir=true is not supported: kd-run reads relative paths (dataset.root, teacher.checkpoint, "
            "cache_dir, ...) from the directory it starts in and writes into hydra.run.dir without it"
        )
    key, job_dir = job_directory(hydra_cfg, multirun)
    cfg = job_config(task_config(config), hydra_cfg, multirun)
    from kd_runner import run  # after the config's checks: a mistake in it is found without torch

    finished = run.check_job(cfg, job_dir, dir_key=key, processes=launched_world_size())
    run_dir = None if job_dir is None else Path(job_dir)
    return Job(num, cfg, run_dir, list(hydra_cfg.overrides.task), finished is not None, config=config)


def task_config(config: DictConfig) -> DictConfig:
    """The job's own config, without Hydra's, as Hydra hands it to a job."""
    task = copy.deepcopy(config)
    with read_write(task), open_dict(task):
        del task["hydra"]
    return task


def job_config(raw: DictConfig, hydra_cfg: DictConfig, multirun: bool) -> RunConfig:
    """A job's typed config. Under a parallel launcher `threads=0` (the environment's count) becomes the
    job's share of the cores unless OMP_NUM_THREADS sets the count, so parallel jobs do not oversubscribe
    the cores and record the thread count they computed with.
    A sweep's jobs are one group in the trackers (logger.group): the sweep directory, unless given."""
    values = OmegaConf.to_container(raw, resolve=True)
    if multirun and values.get("threads") == 0 and "n_jobs" in hydra_cfg.launcher and omp_threads() is None:
        values["threads"] = parallel_threads(hydra_cfg.launcher.n_jobs, cpu_cores())
    if multirun and values.get("logger", {}).get("group") is None:
        values.setdefault("logger", {})["group"] = sweep_group(str(hydra_cfg.sweep.dir))
    return bound(load_config(values))


def bound(cfg):
    """`cfg` (a RunConfig, or a part of one) with every `_target_` node bound to Hydra's own instantiate
    (user_code.Target), so the library builds the user's networks, datasets, soft term, optimizers and
    schedules with `_partial_`, `_args_` and nested nodes without importing Hydra."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            bound(value)
        elif isinstance(value, dict) and value.get("_target_") is not None:
            setattr(cfg, f.name, Target(value, instantiate))
    return cfg


def sweep_group(sweep_dir: str) -> str:
    """A sweep's name in the trackers: its directory, without the default's outputs/sweeps/ in front."""
    return sweep_dir.removeprefix(f"{SWEEPS}/")


def named(cfg: RunConfig, overrides: list[str], swept: list[str]) -> RunConfig:
    """`cfg` with a sweep job's name in the trackers: its overrides of the `swept` keys (alpha=0.5,seed=1),
    unless logger.name is given; the swept keys also go to TensorBoard's HPARAMS."""
    values = dict(_split_override(o) for o in overrides)
    name = ",".join(f"{key}={values[key]}" for key in swept if key in values)
    logger = dataclasses.replace(
        cfg.logger, name=cfg.logger.name or name or None, hparams=[*cfg.logger.hparams, *swept]
    )
    return dataclasses.replace(cfg, logger=logger)


def name_sweep_jobs(planned: list[Job]) -> None:
    """Name each job of a planned sweep by the keys whose values differ between its jobs."""
    values = [dict(_split_override(o) for o in job.overrides) for job in planned]
    keys = dict.fromkeys(key for job in values for key in job)
    swept = [key for key in keys if len({job.get(key) for job in values}) > 1]
    for job in planned:
        job.cfg = named(job.cfg, job.overrides, swept)


def _split_override(override: str) -> tuple[str, str]:
    """`+key=value` as (key, value)."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def parallel_threads(n_jobs: int | None, cores: int) -> int:
    """Each job's threads when `n_jobs` jobs run at once (joblib's count: -1 all cores, -2 all but one)."""
    parallel = n_jobs if n_jobs and n_jobs > 0 else max(1, cores + 1 + (n_jobs or -cores))
    return max(1, cores // parallel)


def job_directory(hydra_cfg: DictConfig, multirun: bool) -> tuple[str, str | None]:
    """The key that sets a job's output directory and that directory (None where it depends on values
    known only once Hydra runs the job, such as hydra.job.id; kd_runner.run checks it then)."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        if multirun:
            return key, os.path.join(hydra_cfg.sweep.dir, str(hydra_cfg.sweep.subdir))
        return key, str(hydra_cfg.run.dir)
    except OmegaConfBaseException:
        return key, None


def sweep_directory(hydra_cfg: DictConfig) -> str:
    """A multirun's one directory, resolved; refused when it depends on a job's values."""
    try:
        return str(hydra_cfg.sweep.dir)
    except OmegaConfBaseException:
        raise UserError(
            "hydra.sweep.dir must not depend on a job's values: it is the one directory of the whole sweep"
        ) from None


def dir_given(hydra_cfg: DictConfig, key: str) -> bool:
    """Whether the command line sets `key` (a resume then needs the very same command)."""
    return any(o.lstrip("+").startswith(key + "=") for o in hydra_cfg.overrides.hydra)


def quoted(value: str) -> str:
    """`value` as a quoted Hydra override value (commas, spaces and brackets stay literal)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def group_options(group: str) -> list[str]:
    """The options of a config group, from kd-run's configs (conf/ and the registered nodes)."""
    if GlobalHydra.instance().is_initialized():
        return GlobalHydra.instance().config_loader().get_group_options(group)
    with hydra_session():
        return GlobalHydra.instance().config_loader().get_group_options(group)


def hydra_message(exc: HydraException) -> str:
    """Hydra's multi-line composition errors as one line that names the key and what is allowed."""
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, _, option = exc.missing_cfg_file.rpartition("/")
        options = exc.options or group_options(group)  # Hydra lists none for an element of a list (logger=[csv,x])
        if options:
            return f"{group}={option!r} is not allowed: one of: {', '.join(sorted(options))}"
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
