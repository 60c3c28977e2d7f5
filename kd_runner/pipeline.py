"""One knowledge-distillation run: data -> teacher(s) -> soft targets -> student stage -> results.

`check_job(cfg, job_dir, ...)` refuses, before anything is written, a job that cannot run here;
`run(cfg, run_dir)` is the whole experiment. The CLI composes the config and calls both. Running again
into the same directory skips a finished run and resumes an unfinished one (kd_runner.store.rundir);
result.json always says how the run stands (kd_runner.status).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from kd_runner.config import RunConfig, config_digest
from kd_runner.data import build_dataset
from kd_runner.data.device import InMemoryData, SplitData, sharded
from kd_runner.data.loader import StreamedData
from kd_runner.data.transfer import describe_transfer, raise_omitted_bias, transfer_data
from kd_runner.data.vision import check_root
from kd_runner.errors import Diverged, RunInterrupted
from kd_runner.models import build_stage_model
from kd_runner.runtime import distributed, interrupt
from kd_runner.runtime.compute import Compute, resolve_device
from kd_runner.runtime.rng import seed_everything
from kd_runner.store import results, rundir
from kd_runner.store.files import check_writable, save_torch, write_json
from kd_runner.teacher.ensemble import prepare_teachers
from kd_runner.teacher.soft_targets import SoftTargets
from kd_runner.train import engine
from kd_runner.train.checkpoint import StageCheckpoint
from kd_runner.train.losses import distillation_loss
from kd_runner.train.metrics import compute_metrics, per_class_accuracy

log = logging.getLogger(__name__)


def check_job(cfg: RunConfig, job_dir: Path | str | None, *, dir_key: str, processes: int = 1) -> None:
    """Raise UserError (one line) when the job cannot run here, before it writes anything: an absent
    device or precision, a batch that does not split across `processes`, a data folder that is not there,
    a cache or job directory (`dir_key` names the setting) that cannot be written, or a job directory that
    holds a run of another config. `job_dir` None: known only once the job runs (checked then)."""
    Compute.resolve(resolve_device(cfg.device), cfg.precision, cfg.memory_format, cfg.compile)
    distributed.Shard(0, processes).check_batch_size(cfg.student.batch_size, "student.batch_size")
    for data_cfg in (cfg.dataset, cfg.transfer.dataset):
        if data_cfg is not None:
            check_root(data_cfg)
    check_writable(cfg.cache_dir, "cache_dir")
    if job_dir is not None:
        check_writable(job_dir, dir_key)
        rundir.finished_record(job_dir, config_digest(cfg))


def run(cfg: RunConfig, run_dir: Path | str | None, stop: Callable[[], object] = interrupt.requested) -> dict | None:
    """Run one experiment into `run_dir`; returns the record also written to result.json.

    A finished run of this config already in `run_dir` is returned as it is; an unfinished one resumes
    from its checkpoints. When `stop()` turns true (SIGTERM/SIGINT), the run saves a checkpoint at the next
    safe point, records itself as interrupted and raises RunInterrupted. A diverged run is recorded and
    returned with status "diverged"; any other error is recorded (status, message, exit code) and raised.

    Under torchrun every process calls this: rank 0 with the run directory, records and writes; the
    others (run_dir=None) compute their part of the run, write nothing and return None.
    """
    shard, device = distributed.setup(resolve_device(cfg.device))
    digest = config_digest(cfg)
    if not shard.is_main:
        return _follow(cfg, device, shard, stop, digest)
    with rundir.claim(run_dir) as run_dir:
        finished = rundir.finished_record(run_dir, digest)
        shard.broadcast((digest, finished is not None))
        if finished is not None:
            log.info(
                "skipped: %s already holds this config's %s run (config digest %s)", run_dir, finished["status"], digest
            )
            return finished
        result_path = run_dir / rundir.RESULT
        write_json(result_path, results.running_record(cfg, device))
        try:
            if stop():  # stopped before it started: recorded like any interruption (a re-run starts it)
                raise RunInterrupted(None)
            return _experiment(cfg, run_dir, device, shard, stop)
        except Exception as exc:  # recorded, so a sweep's tables show it; only a divergence is final
            record = results.failure_record(cfg, device, exc, signal=stop())
            write_json(result_path, record)
            if not isinstance(exc, Diverged):
                raise
            rundir.student_checkpoint(run_dir).unlink(missing_ok=True)  # a re-run would diverge again
            return record


def _follow(cfg: RunConfig, device: torch.device, shard: distributed.Shard, stop, digest: str) -> None:
    """A process other than rank 0: the same job as rank 0, unless rank 0 found it finished."""
    ranks_job, finished = shard.broadcast(None)
    if ranks_job != digest:  # rank 0 failed a job before telling: the processes would pair other jobs
        raise RuntimeError(f"rank 0 is on the job of config digest {ranks_job}, this process on {digest}")
    if not finished:
        with contextlib.suppress(Diverged):  # rank 0 records it
            _experiment(cfg, None, device, shard, stop)


@dataclass
class RunOutputs:
    """What the run records besides its metrics (see results.build_record)."""

    logits_source: str
    compute: dict
    transfer: dict
    per_class_accuracy: dict


def _experiment(
    cfg: RunConfig, run_dir: Path | None, device: torch.device, shard: distributed.Shard, stop: Callable[[], object]
) -> dict:
    timings, start = {}, time.perf_counter()
    compute = Compute.resolve(device, cfg.precision, cfg.memory_format, cfg.compile)
    compute.configure_backends()
    data = shard.main_first(lambda: build_dataset(cfg.dataset))  # a download happens once, on rank 0
    split_data = (
        StreamedData(data, compute, cfg.num_workers) if cfg.loader == "dataloader" else InMemoryData(data, compute)
    )
    timings["data_s"] = time.perf_counter() - start
    log.info(
        "data: %s, %d train / %d val, %d classes, device %s",
        data.name,
        len(data.train),
        len(data.val),
        data.num_classes,
        device,
    )
    log.info("compute: %s, loader %s, %d process(es)", compute.describe(), cfg.loader, shard.world)

    # mistakes in the student's data or weights fail now, not after the teacher's fine-tuning
    student_data = shard.main_first(lambda: transfer_data(cfg, data, split_data))
    if student_data is not split_data:
        log.info("transfer set: %s", describe_transfer(cfg, student_data))
    if cfg.student.weights_path or cfg.student.pretrained:
        build_stage_model(cfg.student, data)
    # the teacher and its logits: made once by rank 0 (and cached), then loaded by the other processes
    teacher = shard.main_first(lambda: prepare_teachers(cfg, data, split_data, cfg.progress, stop))
    timings["teacher_s"] = teacher.seconds

    t0 = time.perf_counter()
    targets = shard.main_first(lambda: SoftTargets(teacher.model, teacher.key, student_data, cfg.cache_dir))
    checkpoint = None  # a run across processes restarts its student stage (its teacher and logits are cached)
    if run_dir is not None and shard.world == 1:
        checkpoint = StageCheckpoint(rundir.student_checkpoint(run_dir), config_digest(cfg), "student")
    student_data = sharded(student_data, shard)
    history, student = _train_student(cfg, data, student_data, targets, checkpoint, shard.agreed(stop))
    timings["student_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start

    outputs = RunOutputs(
        logits_source=targets.source,
        compute={**compute.describe(), "loader": cfg.loader, "processes": shard.world},
        transfer=describe_transfer(cfg, student_data, history[-1].get("omitted_bias")),
        per_class_accuracy=_per_class_accuracy(student, targets, student_data, data.num_classes),
    )
    record = results.build_record(
        cfg=cfg,
        history=history,
        teacher=teacher,
        student_model=student,
        device=device,
        timings=timings,
        outputs=outputs,
    )
    if run_dir is not None:
        _write_outputs(run_dir, record, student, teacher.history, history, checkpoint)
    return record


def _write_outputs(run_dir: Path, record: dict, student, teacher_rows, student_rows, checkpoint) -> None:
    save_torch({k: v.detach().cpu() for k, v in student.state_dict().items()}, run_dir / "student.pt")
    rows = [{"stage": "teacher", **r} for r in teacher_rows] + [{"stage": "student", **r} for r in student_rows]
    results.write_metrics_csv(run_dir / "metrics.csv", rows)
    write_json(run_dir / rundir.RESULT, record)
    if checkpoint is not None:
        checkpoint.remove()  # the completed record is final: the run will not resume again


def _train_student(cfg: RunConfig, data, d: SplitData, targets: SoftTargets, checkpoint, stop):
    """Distill the student from the teacher's logits; the teacher itself never enters the student's graph."""
    seed_everything(cfg.seed)
    student = d.compute.prepare(build_stage_model(cfg.student, data))

    def objective(logits, idx, labels, inputs):
        teacher_logits = None if cfg.alpha == 1 else targets.batch(idx, inputs)  # alpha=1 needs no teacher
        return distillation_loss(logits, teacher_logits, labels, cfg.alpha, cfg.temperature, cfg.soft_loss)

    def evaluate() -> dict:
        d.shard.sync_buffers(student)
        logits = engine.predict(student, d, d.val.images)
        return compute_metrics(logits, targets.val, d.val.labels, cfg.alpha, cfg.temperature, cfg.soft_loss)

    history = engine.fit(
        d.shard.wrap(student),
        d,
        stage="student",
        recipe=cfg.student,
        seed=cfg.seed,
        loss_fn=objective,
        evaluate=evaluate,
        progress=cfg.progress,
        checkpoint=checkpoint,
        stop=stop,
    )
    if not history:  # student.epochs=0: evaluate the untrained (or pretrained) student once
        history = [{"epoch": 0, "lr": None, "train_loss": None, **evaluate()}]
    if cfg.transfer.omitted_bias is not None:  # the final metrics are those of the corrected student
        history[-1].update(omitted_bias=raise_omitted_bias(cfg, student, targets.teacher, d), **evaluate())
    return history, student


def _per_class_accuracy(student, targets: SoftTargets, d: SplitData, num_classes: int) -> dict:
    """Final per-class validation accuracy of the student and the teacher (None for a class without samples)."""
    logits = engine.predict(student, d, d.val.images)
    return {
        "student": per_class_accuracy(logits, d.val.labels, num_classes),
        "teacher": per_class_accuracy(targets.val, d.val.labels, num_classes),
    }
