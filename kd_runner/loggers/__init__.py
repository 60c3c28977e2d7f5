"""Experiment trackers (logger=...): the run's parameters, per-epoch metrics and final record, also sent to
the user's own tools. metrics.csv and result.json stay the record: a tracker that fails warns once and
stops, the run goes on; `logger.strict=true` checks each tracker before the first job instead, so a long
sweep cannot end with nothing tracked. A sweep's jobs are named by their swept overrides, and its end gives
MLflow a parent run holding the sweep's tables and plots (`finish_sweep`)."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from kd_runner.errors import UserError, one_line
from kd_runner.store.files import check_writable

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
    params: dict  # the whole config (MLflow's params, W&B's config)
    hparams: dict  # the keys that tell runs apart (TensorBoard's HPARAMS), no None
    tags: list[str]  # the run's labels (config `tags`)


class Tracker(Protocol):
    def start(self, info: RunInfo) -> None: ...

    def log_epoch(self, stage: str, row: dict) -> None: ...

    def finish(self, record: dict) -> None: ...


def chosen(logger) -> list[str]:
    """The trackers `logger` (a LoggerConfig) turns on, in PACKAGES' order."""
    return [name for name in PACKAGES if getattr(logger, name)]


def check(logger, run_dir: Path | str | None) -> None:
    """Before anything runs: one line naming the extra to install when a chosen tracker's package is missing,
    and with `logger.strict` one line naming a tracker that cannot be reached or written."""
    for name in chosen(logger):
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise UserError(
                f"logger={name} needs the {PACKAGES[name]} package: pip install 'kd-runner[{name}]' "
                f"(from a checkout: pip install '.[{name}]')"
            )
    if logger.strict:
        for name in chosen(logger):
            _check_reachable(name, logger, run_dir)


def _check_reachable(name: str, logger, run_dir: Path | str | None) -> None:
    from kd_runner.loggers import mlflow_run, wandb_run

    checks = {
        "tensorboard": lambda: (
            run_dir is None or check_writable(Path(run_dir), "logger=tensorboard: the run directory")
        ),
        "mlflow": lambda: mlflow_run.check(logger.tracking_uri, experiment_name(logger.project, logger.group)),
        "wandb": lambda: wandb_run.check(logger.mode, run_dir),
    }
    try:
        checks[name]()
    except UserError as exc:
        raise UserError(f"logger.strict=true: {exc}") from None
    except Exception as exc:  # the tracker's own error, whatever its type
        raise UserError(f"logger.strict=true: logger={name} is not usable ({one_line(exc)})") from None


def experiment_name(project: str, group: str | None) -> str:
    """MLflow's experiment of a run: the project, or <project>/<group> for a sweep's jobs."""
    return project if group is None else f"{project}/{group}"


def params(cfg) -> dict:
    """The run's config as flat dotted keys and scalar values (lists as text), the trackers' logger settings
    left out: what every tracker records as the run's parameters."""
    values = dataclasses.asdict(cfg)
    values.pop("logger")
    return _flat(values, "")


MAIN_KEYS = (  # what a comparison of runs starts from
    "teacher",
    "student",
    "dataset",
    "distill",
    "alpha",
    "temperature",
    "soft_loss",
    "seed",
    "teacher.epochs",
    "student.epochs",
    "student.lr",
    "student.batch_size",
    "student.optimizer",
)


def hparams(cfg) -> dict:
    """The keys that tell runs apart, for TensorBoard's HPARAMS (which compares every key it is given): the
    main ones, then `logger.hparams` (a sweep's swept keys); a network or dataset by its name, keys without a
    value (None) left out."""
    values = {
        **params(cfg),
        "teacher": cfg.teacher.label,
        "student": cfg.student.label,
        "dataset": cfg.dataset.name,
        "distill": cfg.distill.method,
    }
    keys = dict.fromkeys([*MAIN_KEYS, *cfg.logger.hparams])
    return {key: values[key] for key in keys if values.get(key) is not None}


def _flat(values: dict, prefix: str) -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and value:
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
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

    logger = cfg.logger
    makers = {
        "tensorboard": tensorboard_run.TensorBoardTracker,
        "mlflow": lambda: mlflow_run.MlflowTracker(logger.tracking_uri, logger.log_model),
        "wandb": lambda: wandb_run.WandbTracker(logger.mode, logger.log_model),
    }
    trackers = Trackers({name: makers[name]() for name in chosen(logger)})
    run_dir = Path(run_dir).absolute()
    name = logger.name or run_dir.name
    info = RunInfo(run_dir, logger.project, logger.group, name, params(cfg), hparams(cfg), list(cfg.tags))
    trackers.start(info)
    return trackers


def finish_sweep(logger: dict, sweep_dir: Path, files: list[Path], name: str, completed: bool) -> None:
    """At a sweep's end, MLflow's parent run `name` of its jobs, holding `files` (the sweep's tables and
    plots), FINISHED when every job `completed`, else FAILED; `logger`: the jobs' logger settings, as their
    result.json recorded them. A tracker that fails warns: the sweep's files on disk are the record."""
    if not logger.get("mlflow"):
        return
    from kd_runner.loggers import mlflow_run

    experiment = experiment_name(logger["project"], logger["group"])
    try:
        status = "FINISHED" if completed else "FAILED"
        mlflow_run.log_sweep(logger["tracking_uri"], experiment, Path(sweep_dir).absolute(), files, name, status)
    except Exception as exc:  # the user's tool, not the sweep: warn, go on
        log.warning("logger=mlflow failed to record the sweep's parent run (%s)", one_line(exc))
