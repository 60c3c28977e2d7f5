"""The `kd-run` entry point: the only module that knows Hydra.

Before Hydra creates any directory, every job of the call (one, or each point of a `-m` sweep) is
composed and validated, its output directory checked (writable; empty, or holding a run of this very
config), so a mistake costs one line on stderr, exit code 2 and no files. Then Hydra runs the jobs, each
calling `pipeline.run` with the typed config.

Exit codes: 0 done (or skipped: already finished), 1 a bug, 2 a usage error, 3 a run diverged (a sweep
finishes its other jobs first), 75 interrupted by SIGTERM/SIGINT (run the same command again to resume).
Tracebacks are shown only with HYDRA_FULL_ERROR=1.
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
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from kd_runner import interrupt, pipeline, rundir
from kd_runner.config import RunConfig, config_digest, load_config
from kd_runner.engine import resolve_device
from kd_runner.errors import Diverged, RunInterrupted, UserError
from kd_runner.files import check_writable
from kd_runner.results import summary

CONFIG_MODULE = "kd_runner.conf"
ConfigStore.instance().store(name="kd_schema", node=RunConfig)
log = logging.getLogger("kd_runner")
_deferred_exit: list[int] = []  # exit codes of jobs that ended without stopping the sweep (diverged)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    informational = any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv)
    if not informational:
        try:
            preflight([a for a in argv if a not in ("-m", "--multirun")], multirun="-m" in argv or "--multirun" in argv)
        except UserError as exc:
            fail(exc)
    sys.argv = [sys.argv[0], *argv]
    _deferred_exit.clear()
    try:
        with interrupt.graceful_stop():
            hydra_main()
    except KeyboardInterrupt:  # a second SIGTERM/SIGINT: stopped at once, the last checkpoint is kept
        print("kd-run: stopped at once by a second signal; run the same command again to resume "
              "from the last checkpoint", file=sys.stderr)
        sys.exit(RunInterrupted.exit_code)
    if _deferred_exit:
        sys.exit(max(_deferred_exit))


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


def preflight(overrides: list[str], multirun: bool) -> None:
    """Compose and validate every job's config; raise UserError with one line on the first mistake."""
    from hydra import compose, initialize_config_module
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        jobs = BasicSweeper.split_arguments(parsed, None)[0] if multirun else [overrides]
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            for num, job in enumerate(jobs):
                composed = compose("config", overrides=[*job, f"hydra.job.num={num}"], return_hydra_config=True)
                key, job_dir = job_directory(composed.hydra, multirun)
                with open_dict(composed):
                    del composed["hydra"]
                cfg = load_config(OmegaConf.to_container(composed, resolve=True))
                resolve_device(cfg.device)  # an absent cuda/mps is refused before anything is written
                check_writable(cfg.cache_dir, "cache_dir")
                if job_dir is not None:
                    check_writable(job_dir, key)
                    rundir.finished_record(job_dir, config_digest(cfg))  # refuses a directory of another config
    except HydraException as exc:
        raise UserError(hydra_message(exc)) from None
    finally:
        GlobalHydra.instance().clear()


def job_directory(hydra_cfg: DictConfig, multirun: bool) -> tuple[str, str | None]:
    """The key that sets a job's output directory and that directory (None where it depends on values
    known only once Hydra runs the job, such as hydra.job.id; pipeline.run checks it then)."""
    try:
        if multirun:
            return "hydra.sweep.dir", os.path.join(hydra_cfg.sweep.dir, str(hydra_cfg.sweep.subdir))
        return "hydra.run.dir", hydra_cfg.run.dir
    except OmegaConfBaseException:
        return ("hydra.sweep.dir" if multirun else "hydra.run.dir"), None


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
def hydra_main(raw: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        cfg = load_config(OmegaConf.to_container(raw, resolve=True))
        record = pipeline.run(cfg, run_dir)
    except UserError as exc:
        fail(exc)
    except RunInterrupted as exc:
        fail(exc, label=f"interrupted by {interrupt.requested()}", hint=resume_hint())
    if record["status"] == Diverged.status:  # recorded in result.json; the other jobs of a sweep go on
        print(f"kd-run: diverged: {record['message']} ({run_dir})", file=sys.stderr)
        _deferred_exit.append(Diverged.exit_code)
        return None
    print(summary(record, run_dir))
    return record["metrics"]["student_acc"]
