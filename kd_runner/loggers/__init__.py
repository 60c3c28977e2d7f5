"""Experiment trackers (logger=...): the run's parameters, per-epoch metrics and final record, also sent to
the user's own tools. metrics.csv and result.json stay the record: a tracker that fails warns once and
stops, the run goes on."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kd_runner.errors import UserError

log = logging.getLogger(__name__)

# each tracker: the package it needs (also the name of kd-runner's extra that installs it)
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}


@dataclass
class RunInfo:
    """What a tracker run is called and what it describes."""

    run_dir: Path
    project: str
    group: str | None  # the sweep this run is a job of
    name: str
    params: dict
    tags: list[str]  # the run's labels (config `tags`)


class Tracker(Protocol):
    def start(self, info: RunInfo) -> None: ...

    def log_epoch(self, stage: str, row: dict) -> None: ...

    def finish(self, record: dict) -> None: ...


def chosen(logger) -> list[str]:
    """The trackers `logger` (a LoggerConfig) turns on, in PACKAGES' order."""
    return [name for name in PACKAGES if getattr(logger, name)]


def check_installed(logger) -> None:
    """One line naming the extra to install when a chosen tracker's package is missing (before anything runs)."""
    for name in chosen(logger):
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UserError(
                f"logger={name} needs the {PACKAGES[name]} package: pip install 'kd-runner[{name}]' "
                f"(from a checkout: pip install '.[{name}]')"
            )


def params(cfg) -> dict:
    """The run's config as flat dotted keys and scalar values (lists and None as text), the trackers' logger
    settings left out: what every tracker records as the run's parameters."""
    values = dataclasses.asdict(cfg)
    values.pop("logger")
    return _flat(values, "")


def _flat(values: dict, prefix: str) -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


class Trackers:
    """The chosen trackers as one: each call goes to every tracker still working; one that raises warns
    once and is dropped. `log_rows` sends only the rows not sent before (a stage's rows are re-recorded)."""

    def __init__(self, trackers: dict[str, Tracker]):
        self.trackers = trackers
        self.sent: dict[str, int] = {}

    def start(self, info: RunInfo) -> None:
        self._each("start", info)

    def log_rows(self, stage: str, rows: list[dict]) -> None:
        for row in rows[self.sent.get(stage, 0) :]:
            self._each("log_epoch", stage, row)
        self.sent[stage] = len(rows)

    def finish(self, record: dict) -> None:
        self._each("finish", record)

    def _each(self, method: str, *args) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # the user's tool, not the run: warn once, go on without it
                log.warning(
                    "logger=%s failed (%s: %s); it is off for the rest of this run, metrics.csv and "
                    "result.json are the record",
                    name,
                    type(exc).__name__,
                    exc,
                )
                del self.trackers[name]


def start(cfg, run_dir: Path) -> Trackers:
    """The trackers `cfg.logger` chooses, started for the run in `run_dir`."""
    from kd_runner.loggers import mlflow_run, tensorboard_run, wandb_run

    makers = {
        "tensorboard": tensorboard_run.TensorBoardTracker,
        "mlflow": lambda: mlflow_run.MlflowTracker(cfg.logger.tracking_uri),
        "wandb": lambda: wandb_run.WandbTracker(cfg.logger.mode),
    }
    trackers = Trackers({name: makers[name]() for name in chosen(cfg.logger)})
    name = cfg.logger.name or run_dir.name
    info = RunInfo(run_dir, cfg.logger.project, cfg.logger.group, name, params(cfg), list(cfg.tags))
    trackers.start(info)
    return trackers
