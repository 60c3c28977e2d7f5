"""What a job needs before it may start: checked before anything is written, so a mistake is one line."""

from __future__ import annotations

from pathlib import Path

from kd_runner import loggers
from kd_runner.config import RunConfig, config_digest
from kd_runner.data import build_dataset
from kd_runner.data.vision import check_root
from kd_runner.models import build_stage_model
from kd_runner.models.custom import check_output
from kd_runner.runtime import distributed
from kd_runner.runtime.compute import Compute, resolve_device
from kd_runner.store import rundir
from kd_runner.store.files import check_writable


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
    loggers.check(cfg.logger, job_dir)
    check_writable(cfg.cache_dir, "cache_dir")
    if job_dir is None:
        return None
    check_writable(job_dir, dir_key)
    return rundir.finished_record(job_dir, config_digest(cfg))


def check_user_code(cfg: RunConfig) -> None:
    """With a dataset or network of the user's own (`_target_`), build the dataset and both networks now and
    run each network on one batch, so a mistake in them is one line before anything is written."""
    if all(spec["_target_"] is None for spec in (cfg.dataset.factory, cfg.teacher.model, cfg.student.model)):
        return
    data = build_dataset(cfg.dataset)
    images = data.sample_batch()
    for key, stage in (("teacher", cfg.teacher), ("student", cfg.student)):
        target = stage.model["_target_"]
        what = f"{key}.name={stage.name}" if target is None else f"{key}.model._target_={target}"
        check_output(build_stage_model(stage, data, key), images, data.num_classes, what)
