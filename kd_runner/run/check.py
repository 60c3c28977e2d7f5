"""What a job needs before it may start: checked before anything is written, so a mistake is one line."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from kd_runner import loggers, user_code
from kd_runner.config import RunConfig, config_digest, user_targets
from kd_runner.data import Dataset, build_dataset
from kd_runner.data.splits import InMemoryData
from kd_runner.data.vision import check_root
from kd_runner.errors import ConfigError, UserError
from kd_runner.methods import make as make_method
from kd_runner.models import build_stage_model
from kd_runner.models.custom import check_output
from kd_runner.models.torchvision_nets import fetch_pretrained
from kd_runner.run.student import check_layers
from kd_runner.runtime import distributed
from kd_runner.runtime.compute import Compute, resolve_device
from kd_runner.store import rundir
from kd_runner.store.files import check_writable, digest
from kd_runner.train.optim import make_optimizer, make_scheduler


def check_job(cfg: RunConfig, job_dir: Path | str | None, *, dir_key: str, processes: int = 1) -> dict | None:
    """Raise UserError (one line) when the job cannot run here, before it writes anything: an absent
    device or precision, a batch that does not split across `processes`, a data folder that is not there,
    a cache or job directory (`dir_key` names the setting) that cannot be written, or a job directory that
    holds a run of another config (a stage whose training split is too small for a step is refused once the
    data is built: `engine.check_steps`). `job_dir` None: known only once the job runs (checked then).

    Returns the record of this config's finished run in `job_dir` (the run will skip it), or None."""
    Compute.resolve(resolve_device(cfg.device), cfg.precision, cfg.memory_format, cfg.compile)
    for name, stage in (("teacher", cfg.teacher), ("student", cfg.student)):
        if stage.epochs > 0:  # a batch that no process can take 2 samples of is dropped: no step at all
            distributed.Shard(0, processes).check_batch_size(stage.batch_size, f"{name}.batch_size")
    for data_cfg in (cfg.dataset, cfg.transfer.dataset):
        if data_cfg is not None:
            check_root(data_cfg)
    check_user_code(cfg)
    check_recipes(cfg)
    loggers.check(cfg.logger, job_dir)
    check_writable(cfg.cache_dir, "cache_dir")
    if job_dir is None:
        return None
    check_writable(job_dir, dir_key)
    return rundir.finished_record(job_dir, config_digest(cfg))


def check_recipes(cfg: RunConfig) -> None:
    """A stage's optimizer or schedule of the user's (a `_target_` node), built on a stand-in parameter: a
    mistake in it, or something else than an optimizer and a schedule, is one line before anything runs."""
    for name, stage in (("teacher", cfg.teacher), ("student", cfg.student)):
        if not any(isinstance(value, Mapping) for value in (stage.optimizer, stage.scheduler)):
            continue
        optimizer = make_optimizer([torch.nn.Parameter(torch.zeros(1))], stage, f"{name}.optimizer")
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigError(
                f"{name}.optimizer",
                stage.optimizer,
                f"a node building a torch.optim.Optimizer (it built a {type(optimizer).__name__})",
            )
        scheduler = make_scheduler(optimizer, stage, 1, f"{name}.scheduler")
        if not all(callable(getattr(scheduler, method, None)) for method in ("step", "state_dict", "load_state_dict")):
            raise ConfigError(
                f"{name}.scheduler",
                stage.scheduler,
                f"a node building a learning-rate scheduler (it built a {type(scheduler).__name__})",
            )


def check_user_code(cfg: RunConfig) -> None:
    """With a dataset or network of the user's own (`_target_`), build the dataset and both networks now and
    run each network on one batch, so a mistake in them is one line before anything is written."""
    if all(spec["_target_"] is None for spec in (cfg.dataset.factory, cfg.teacher.model, cfg.student.model)):
        return
    try:
        data = build_dataset(cfg.dataset)
        images = data.sample_batch()
        for key, stage in (("teacher", cfg.teacher), ("student", cfg.student)):
            target = stage.model["_target_"]
            what = f"{key}.name={stage.name}" if target is None else f"{key}.model._target_={target}"
            check_output(build_stage_model(stage, data, key), images, data.num_classes, what)
    except Exception as exc:  # raised in the user's code (a dataset item that cannot be read): one line naming it
        raise user_code.blamed(exc, user_targets(cfg)) from exc


class Probes:
    """The deeper checks of a sweep's jobs, before any job starts: the ImageNet weight files of pretrained
    networks (fetched now, or their missing file named) and the feature layers of a feature method, resolved
    on freshly built networks. Each distinct check runs once for the whole sweep (an alpha or seed sweep
    builds its networks once), and its outcome is remembered for every job that needs it."""

    def __init__(self):
        self.outcomes: dict[str, UserError | None] = {}
        self.datasets: dict[str, tuple[Dataset, InMemoryData]] = {}

    def check(self, cfg: RunConfig) -> None:
        """Raise the job's first problem (UserError, one line)."""
        for stage in (cfg.teacher, cfg.student):
            if stage.pretrained and stage.model["_target_"] is None:
                self._once(f"pretrained {stage.name}", lambda name=stage.name: fetch_pretrained(name))
        method = make_method(cfg.distill, cfg.temperature, cfg.soft_loss)
        if method.needs != "logits" or method.has_init:
            networks = {name: _architecture(getattr(cfg, name)) for name in ("teacher", "student")}
            key = digest({"distill": dataclasses.asdict(cfg.distill), **networks, "dataset": _dataset_key(cfg)})
            self._once(key, lambda: check_layers(cfg, *self._data(cfg)))

    def _once(self, key: str, check: Callable[[], object]) -> None:
        if key not in self.outcomes:
            try:
                check()
                self.outcomes[key] = None
            except UserError as exc:
                self.outcomes[key] = exc
        if self.outcomes[key] is not None:
            raise self.outcomes[key]

    def _data(self, cfg: RunConfig) -> tuple[Dataset, InMemoryData]:
        """The job's dataset and its splits on the CPU, built once per dataset config."""
        key = _dataset_key(cfg)
        if key not in self.datasets:
            data = build_dataset(cfg.dataset)
            self.datasets[key] = data, InMemoryData(data, Compute(torch.device("cpu")))
        return self.datasets[key]


def _architecture(stage) -> dict:
    """What shapes a stage's network (not how it trains)."""
    return {"name": stage.name, "model": stage.model, "width": stage.width, "depth": stage.depth}


def _dataset_key(cfg: RunConfig) -> str:
    return digest(dataclasses.asdict(cfg.dataset))
