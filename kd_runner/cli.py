"""The `kd-run` entry point: the only module that knows Hydra.

Before Hydra creates any directory, every job of the call (one, or each point of a `-m` sweep) is
composed and validated, so a mistake costs one line on stderr, exit code 2 and no files. Then Hydra
runs the jobs, each calling `pipeline.run` with the typed config.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, OmegaConf

from kd_runner import pipeline
from kd_runner.config import RunConfig, load_config
from kd_runner.errors import UserError
from kd_runner.results import summary

CONFIG_MODULE = "kd_runner.conf"
ConfigStore.instance().store(name="kd_schema", node=RunConfig)
log = logging.getLogger("kd_runner")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    informational = any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv)
    if not informational:
        try:
            preflight([a for a in argv if a not in ("-m", "--multirun")], multirun="-m" in argv or "--multirun" in argv)
        except UserError as exc:
            fail(exc)
    sys.argv = [sys.argv[0], *argv]
    hydra_main()


def fail(exc: UserError) -> None:
    print(f"kd-run: error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


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
            for job in jobs:
                load_config(OmegaConf.to_container(compose("config", overrides=job), resolve=True))
    except HydraException as exc:
        raise UserError(hydra_message(exc)) from None
    finally:
        GlobalHydra.instance().clear()


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
    print(summary(record, run_dir))
    return record["metrics"]["student_acc"]
