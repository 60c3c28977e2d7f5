"""The `kd-run` entry point: the only module that knows Hydra.

Before Hydra creates any directory, every job of the call (one, or each point of a `-m` sweep) is
composed and validated, so a mistake costs one line on stderr, exit code 2 and no files. Then Hydra
runs the jobs, each calling `pipeline.run` with the typed config. In a sweep a failing job is recorded in
its result.json instead of stopping the others, and when Hydra returns (or gives up) the sweep directory
is aggregated into tables and plots; the sweep exits 1 if any job did not complete.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from kd_runner import pipeline
from kd_runner.aggregate import write_plan
from kd_runner.config import RunConfig, load_config
from kd_runner.errors import UserError
from kd_runner.results import error_line, failure_record, summary, write_result
from kd_runner.sweep_cli import finish_sweep

CONFIG_MODULE = "kd_runner.conf"
ConfigStore.instance().store(name="kd_schema", node=RunConfig)
log = logging.getLogger("kd_runner")
_sweep_dirs: list[Path] = []  # filled by SweepDirRecorder when Hydra starts a multirun


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    informational = any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv)
    multirun = False
    if not informational:
        try:
            overrides = [a for a in argv if a not in ("-m", "--multirun")]
            multirun = preflight(overrides, multirun="-m" in argv or "--multirun" in argv)
        except UserError as exc:
            fail(exc)
    sys.argv = [sys.argv[0], *argv]
    if multirun:
        run_sweep()
    else:
        hydra_main()


class SweepDirRecorder(Callback):
    """Hydra callback (conf/config.yaml): remembers where a starting multirun writes, for `run_sweep`, and
    records the jobs it will run there (sweep.json), so an interrupted sweep shows what never ran."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        _sweep_dirs.append(sweep_dir)
        write_plan(sweep_dir, sweep_jobs(config.hydra.sweeper.params, list(config.hydra.overrides.task)))


def run_sweep() -> None:
    """Hydra's multirun, then the sweep's tables and plots, also when it stopped early (Hydra skips its own
    end-of-multirun hook then). Exits 1 when a job did not complete."""
    _sweep_dirs.clear()
    try:
        hydra_main()
    finally:
        all_completed = all([finish_sweep(sweep_dir) for sweep_dir in _sweep_dirs])
    if not all_completed:
        sys.exit(1)


def fail(exc: UserError) -> None:
    print(f"kd-run: error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def sweep_jobs(params, overrides: list[str]) -> list[list[str]]:
    """The jobs of a multirun, as Hydra's basic sweeper makes them: the config's sweep params
    (`hydra.sweeper.params`, e.g. from a preset) combined with the overrides, which win on the same key."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{key}={value}" for key, value in (params or {}).items()]
    batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(params + overrides), None)
    return [job for batch in batches for job in batch]


def preflight(overrides: list[str], multirun: bool) -> bool:
    """Compose and validate every job's config; raise UserError with one line on the first mistake.

    Returns whether the call is a multirun: `-m`, or a preset such as `sweep=alpha` that sets `hydra.mode`;
    a multirun's jobs are those of `sweep_jobs`.
    """
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        fixed = [o.input_line for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()]
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            hydra_cfg = compose("config", overrides=fixed, return_hydra_config=True).hydra
            multirun = multirun or hydra_cfg.mode == RunMode.MULTIRUN
            jobs = sweep_jobs(hydra_cfg.sweeper.params, overrides) if multirun else [overrides]
            for job in jobs:
                load_config(OmegaConf.to_container(compose("config", overrides=job), resolve=True))
    except HydraException as exc:
        raise UserError(hydra_message(exc)) from None
    finally:
        GlobalHydra.instance().clear()
    return multirun


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
    try:
        cfg = load_config(OmegaConf.to_container(raw, resolve=True))
        record = pipeline.run(cfg, run_dir)
    except (Exception, SystemExit) as exc:
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return record_failed_job(exc, raw, run_dir)
        if isinstance(exc, UserError):
            fail(exc)
        raise
    print(summary(record, run_dir))
    return record["metrics"]["student_acc"]


def record_failed_job(exc: BaseException, raw: DictConfig, run_dir: Path) -> None:
    """A sweep job's failure goes to its log and result.json instead of stopping the other jobs."""
    error = error_line(exc)
    log.error("job failed: %s", error, exc_info=not isinstance(exc, UserError))
    write_result(run_dir / "result.json", failure_record(error, OmegaConf.to_container(raw, resolve=True)))
