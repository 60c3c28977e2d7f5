"""One knowledge-distillation run: data -> teacher(s) -> transfer set -> student stage -> results.

`run(cfg, run_dir)` is the whole experiment; the CLI only composes and validates the config and calls it.
Running it again into the same directory skips a finished run and resumes an unfinished one
(kd_runner.rundir); result.json always says how the run stands: running, completed, interrupted,
diverged or failed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Callable

import torch

from kd_runner import distributed, engine, interrupt, results, rundir, transfer
from kd_runner.checkpoint import StageCheckpoint
from kd_runner.compute import Compute
from kd_runner.config import RunConfig, config_digest
from kd_runner.data import build_dataset
from kd_runner.ensemble import prepare_teachers
from kd_runner.errors import Diverged, RunInterrupted, UserError
from kd_runner.files import save_torch
from kd_runner.loader import LoaderData
from kd_runner.losses import distillation_loss
from kd_runner.metrics import compute_metrics, per_class_accuracy
from kd_runner.soft_targets import SoftTargets

log = logging.getLogger(__name__)


def run(cfg: RunConfig, run_dir: Path | str | None, stop: Callable[[], object] = interrupt.requested) -> dict | None:
    """Run one experiment into `run_dir`; returns the record also written to result.json.

    A finished run of this config already in `run_dir` is returned as it is; an unfinished one resumes
    from its checkpoints. When `stop()` turns true (SIGTERM/SIGINT), the run saves a checkpoint at the next
    safe point, records itself as interrupted and raises RunInterrupted. A diverged run is recorded and
    returned with status "diverged"; any other error is recorded as "failed" and raised.

    Under torchrun every process calls this: rank 0 with the run directory, records and writes; the
    others (run_dir=None) compute their part of the run, write nothing and return None.
    """
    shard, device = distributed.setup(engine.resolve_device(cfg.device))
    digest = config_digest(cfg)
    if not shard.is_main:
        ranks_job, finished = shard.broadcast(None)
        if ranks_job != digest:  # rank 0 failed a job before telling: the processes would pair other jobs
            raise RuntimeError(f"rank 0 is on the job of config digest {ranks_job}, this process on {digest}")
        if not finished:
            with contextlib.suppress(Diverged):  # rank 0 records it
                _experiment(cfg, None, device, shard, stop)
        return None
    with rundir.claim(run_dir) as run_dir:
        finished = rundir.finished_record(run_dir, digest)
        shard.broadcast((digest, finished is not None))
        if finished is not None:
            log.info("skipped: %s already holds this config's %s run (config digest %s)", run_dir, finished["status"], digest)
            return finished
        result_path = run_dir / rundir.RESULT
        results.write_result(result_path, results.status_record(cfg, "running", device))
        try:
            if stop():  # stopped before it started: recorded like any interruption (a re-run starts it)
                raise RunInterrupted(None)
            return _experiment(cfg, run_dir, device, shard, stop)
        except Diverged as exc:  # final: a re-run would diverge again, so the student checkpoint goes
            rundir.student_checkpoint(run_dir).unlink(missing_ok=True)
            record = results.status_record(cfg, exc.status, device, stage=exc.stage, epoch=exc.epoch, message=str(exc))
            results.write_result(result_path, record)
            return record
        except RunInterrupted as exc:
            details = {"stage": exc.stage, "epoch": exc.epoch, "batches": exc.batches, "signal": stop()}
            results.write_result(result_path, results.status_record(cfg, exc.status, device, **details, message=str(exc)))
            raise
        except UserError as exc:
            results.write_result(result_path, results.status_record(cfg, exc.status, device, message=str(exc)))
            raise
        except Exception as exc:  # a bug: recorded too, so a sweep's tables show it, then raised loudly
            results.write_result(result_path, results.status_record(cfg, "failed", device, message=results.error_line(exc)))
            raise


def _experiment(
    cfg: RunConfig, run_dir: Path | None, device: torch.device, shard: distributed.Shard, stop: Callable[[], object]
) -> dict:
    timings = {}
    start = time.perf_counter()
    compute = Compute.resolve(device, cfg.precision, cfg.memory_format, cfg.compile)
    compute.configure_backends()
    data = shard.main_first(lambda: build_dataset(cfg.dataset))  # a download happens once, on rank 0
    if cfg.loader == "dataloader":
        device_data = LoaderData(data, compute, cfg.num_workers)
    else:
        device_data = engine.DeviceData(data, device, compute)
    timings["data_s"] = time.perf_counter() - start
    log.info("data: %s, %d train / %d val, %d classes, device %s",
             data.name, len(data.train), len(data.val), data.num_classes, device)
    log.info("compute: %s, loader %s, %d process(es)", compute.describe(), cfg.loader, shard.world)

    # mistakes in the student's data or weights fail now, not after the teacher's fine-tuning
    student_data = shard.main_first(lambda: transfer.transfer_data(cfg, data, device_data))
    if student_data is not device_data:
        log.info("transfer set: %s", transfer.describe(cfg, student_data))
    if cfg.student.weights_path or cfg.student.pretrained:
        engine.build_stage_model(cfg.student, data)
    # the teacher and its logits: made once by rank 0 (and cached), then loaded by the other processes
    teacher = shard.main_first(lambda: prepare_teachers(cfg, data, device_data, cfg.progress, stop))
    timings["teacher_s"] = teacher.seconds

    t0 = time.perf_counter()
    targets = shard.main_first(lambda: SoftTargets(teacher.model, teacher.key, student_data, cfg.cache_dir))
    checkpoint = None  # a run across processes restarts its student stage (its teacher and logits are cached)
    if run_dir is not None and shard.world == 1:
        checkpoint = StageCheckpoint(rundir.student_checkpoint(run_dir), config_digest(cfg), "student")
    student_data = student_data.sharded(shard)
    history, student = _train_student(cfg, data, student_data, targets, checkpoint, shard.agreed(stop))
    timings["student_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start

    per_class = _per_class_accuracy(student, targets, student_data, data.num_classes)
    record = results.build_record(
        cfg=cfg, history=history, teacher=teacher, student_model=student, device=device, timings=timings
    )
    record["teacher"]["logits"] = targets.source
    record["compute"] = {**compute.describe(), "loader": cfg.loader, "processes": shard.world}
    record["transfer"] = transfer.describe(cfg, student_data)
    record["per_class_accuracy"] = per_class
    if run_dir is None:
        return record
    save_torch({k: v.detach().cpu() for k, v in student.state_dict().items()}, run_dir / "student.pt")
    rows = [{"stage": "teacher", **r} for r in teacher.history] + [{"stage": "student", **r} for r in history]
    results.write_metrics_csv(run_dir / "metrics.csv", rows)
    results.write_result(run_dir / rundir.RESULT, record)
    if checkpoint is not None:
        checkpoint.remove()  # the completed record is final: the run will not resume again
    return record


def _train_student(cfg: RunConfig, data, d: engine.DeviceData, targets: SoftTargets, checkpoint, stop):
    """Distill the student from the teacher's logits; the teacher itself never enters the student's graph."""
    engine.seed_everything(cfg.seed)
    student = d.compute.prepare(engine.build_stage_model(cfg.student, data))

    def objective(logits, idx, labels, inputs):
        teacher_logits = None if cfg.alpha == 1 else targets.batch(idx, inputs)  # alpha=1 needs no teacher
        return distillation_loss(logits, teacher_logits, labels, cfg.alpha, cfg.temperature, cfg.soft_loss)

    def evaluate() -> dict:
        d.shard.sync_buffers(student)
        logits = engine.predict(student, d, d.val.images)
        return compute_metrics(logits, targets.val, d.val.labels, cfg.alpha, cfg.temperature, cfg.soft_loss)

    history = engine.fit(
        d.shard.wrap(student), d, cfg.student, cfg.seed, objective, evaluate, "student", cfg.progress, checkpoint, stop
    )
    if not history:  # student.epochs=0: evaluate the untrained (or pretrained) student once
        history = [{"epoch": 0, "lr": None, "train_loss": None, **evaluate()}]
    return history, student


def _per_class_accuracy(student, targets: SoftTargets, d: engine.DeviceData, num_classes: int) -> dict:
    """Final per-class validation accuracy of the student and the teacher (None for a class without samples)."""
    logits = engine.predict(student, d, d.val.images)
    return {
        "student": per_class_accuracy(logits, d.val.labels, num_classes),
        "teacher": per_class_accuracy(targets.val, d.val.labels, num_classes),
    }
