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
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from kd_runner import distributed, interrupt, pipeline, rundir
from kd_runner.aggregate import write_plan
from kd_runner.compute import Compute
from kd_runner.config import RunConfig, config_digest, load_config
from kd_runner.data.vision import check_root
from kd_runner.distributed import Shard
from kd_runner.engine import resolve_device
from kd_runner.errors import Diverged, RunInterrupted, UserError
from kd_runner.files import check_writable
from kd_runner.results import error_line, summary
from kd_runner.sweep_cli import finish_sweep

CONFIG_MODULE = "kd_runner.conf"
ConfigStore.instance().store(name="kd_schema", node=RunConfig)
log = logging.getLogger("kd_runner")
_sweep_dirs: list[Path] = []  # filled by SweepDirRecorder when Hydra starts a multirun
_deferred_exit: list[int] = []  # exit codes of jobs that ended without stopping the sweep


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    informational = any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv)
    multirun = False
    if not informational:
        try:
            overrides = [a for a in argv if a not in ("-m", "--multirun")]
            multirun, configs = preflight(overrides, multirun="-m" in argv or "--multirun" in argv)
        except UserError as exc:
            fail(exc)
        if distributed.launched_rank() > 0:
            return run_worker(configs)
    sys.argv = [sys.argv[0], *argv]
    _deferred_exit.clear()
    try:
        with interrupt.graceful_stop():
            run_sweep() if multirun else hydra_main()
    except KeyboardInterrupt:  # a second SIGTERM/SIGINT: stopped at once, the last checkpoint is kept
        print("kd-run: stopped at once by a second signal; run the same command again to resume "
              "from the last checkpoint", file=sys.stderr)
        sys.exit(RunInterrupted.exit_code)
    if _deferred_exit:
        sys.exit(max(_deferred_exit))


class SweepDirRecorder(Callback):
    """Hydra callback (conf/config.yaml): remembers where a starting multirun writes, for `run_sweep`, and
    records the jobs it will run there (sweep.json), so an interrupted sweep shows what never ran."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        _sweep_dirs.append(sweep_dir)
        write_plan(sweep_dir, sweep_jobs(config.hydra.sweeper.params, list(config.hydra.overrides.task)))


def run_sweep() -> None:
    """Hydra's multirun, then the sweep's tables and plots, also when it stopped early (Hydra skips its own
    end-of-multirun hook then). A job that did not complete makes the sweep exit non-zero."""
    _sweep_dirs.clear()
    try:
        hydra_main()
    finally:
        all_completed = all([finish_sweep(sweep_dir) for sweep_dir in _sweep_dirs])
    if not all_completed:
        _deferred_exit.append(1)


def run_worker(configs: list[RunConfig]) -> None:
    """A torchrun process other than rank 0: it computes its part of every job, in the order rank 0's Hydra
    runs them, and writes nothing (no run directory, no logs). A job that fails or diverges is recorded
    by rank 0; like rank 0, a worker goes on with the next job of a sweep. An interruption ends it."""
    failed = None
    try:
        with interrupt.graceful_stop():
            for cfg in configs:
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


def resume_hint() -> str:
    """How to continue this job: the same command, into the same directory (named if it was a default)."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    key, value = ("hydra.sweep.dir", hydra_cfg.sweep.dir) if multirun else ("hydra.run.dir", hydra_cfg.run.dir)
    if any(o.startswith(key + "=") for o in hydra_cfg.overrides.hydra):
        return "run the same command again to resume"
    return f"run the same command with {key}={value} to resume"


def sweep_jobs(params, overrides: list[str]) -> list[list[str]]:
    """The jobs of a multirun, as Hydra's basic sweeper makes them: the config's sweep params
    (`hydra.sweeper.params`, e.g. from a preset) combined with the overrides, which win on the same key."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{key}={value}" for key, value in (params or {}).items()]
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params + overrides), None)
    return [job for batch in batches for job in batch]


def preflight(overrides: list[str], multirun: bool) -> tuple[bool, list[RunConfig]]:
    """Compose and validate every job's config and output directory; raise UserError with one line on the
    first mistake. Returns whether the call is a multirun (`-m`, or a preset such as `sweep=alpha` that sets
    `hydra.mode`; a multirun's jobs are those of `sweep_jobs`) and the jobs' configs in Hydra's order."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        fixed = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            hydra_cfg = compose("config", overrides=fixed, return_hydra_config=True).hydra
            multirun = multirun or hydra_cfg.mode == RunMode.MULTIRUN
            jobs = sweep_jobs(hydra_cfg.sweeper.params, overrides) if multirun else [overrides]
            processes = distributed.launched_world_size()
            launcher = hydra_cfg.launcher._target_.rsplit(".", 1)[-1]
            if processes > 1 and multirun and launcher != "BasicLauncher":
                raise UserError(f"hydra/launcher={launcher} is not allowed under torchrun: every process runs the "
                                "jobs one after another; use the default launcher")
            configs = []
            for num, job in enumerate(jobs):
                composed = compose("config", overrides=[*job, f"hydra.job.num={num}"], return_hydra_config=True)
                key, job_dir = job_directory(composed.hydra, multirun)
                with open_dict(composed):
                    del composed["hydra"]
                cfg = load_config(OmegaConf.to_container(composed, resolve=True))
                # an absent cuda/mps, or bf16 on a GPU without it, is refused before anything is written
                Compute.resolve(resolve_device(cfg.device), cfg.precision, cfg.memory_format, cfg.compile)
                Shard(0, processes).check_batch_size(cfg.student.batch_size, "student.batch_size")
                for data_cfg in (cfg.dataset, cfg.transfer.dataset):  # so is a data folder that is not there
                    if data_cfg is not None:
                        check_root(data_cfg)
                check_writable(cfg.cache_dir, "cache_dir")
                if job_dir is not None:
                    check_writable(job_dir, key)
                    rundir.finished_record(job_dir, config_digest(cfg))  # refuses a directory of another config
                configs.append(cfg)
    except HydraException as exc:
        raise UserError(hydra_message(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    return multirun, configs


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
    cause = exc.__cause__
    if cause is not None and hasattr(cause, "full_key"):
        reason = str(cause).strip().splitlines()[0]
        return f"{cause.full_key}: {reason}"
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return "; ".join(lines[:2]) if lines else type(exc).__name__


@hydra.main(version_base="1.3", config_path="pkg://" + CONFIG_MODULE, config_name="config")
def hydra_main(raw: DictConfig) -> float | None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        cfg = load_config(OmegaConf.to_container(raw, resolve=True))
        record = pipeline.run(cfg, run_dir)
    except RunInterrupted as exc:  # stops a whole sweep too; its tables are still written
        fail(exc, label=f"interrupted by {interrupt.requested()}", hint=resume_hint())
    except Exception as exc:
        if not multirun:
            if isinstance(exc, UserError):
                fail(exc)
            raise
        return record_failed_job(exc)
    if record["status"] == Diverged.status:  # recorded in result.json; the other jobs of a sweep go on
        print(f"kd-run: diverged: {record['message']} ({run_dir})", file=sys.stderr)
        _deferred_exit.append(Diverged.exit_code)
        return None
    print(summary(record, run_dir))
    return record["metrics"]["student_acc"]


def record_failed_job(exc: Exception) -> None:
    """A sweep job's failure (already in its result.json, by pipeline.run) goes to its log; the others go on."""
    log.error("job failed: %s", error_line(exc), exc_info=not isinstance(exc, UserError))
    _deferred_exit.append(getattr(exc, "exit_code", 1))
