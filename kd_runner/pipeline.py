"""One knowledge-distillation run: data -> teacher(s) -> transfer set -> student stage -> results.

`run(cfg, run_dir)` is the whole experiment; the CLI only composes and validates the config and calls it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from kd_runner import engine, results, transfer
from kd_runner.config import RunConfig
from kd_runner.data import build_dataset
from kd_runner.ensemble import prepare_teachers
from kd_runner.files import save_torch
from kd_runner.losses import distillation_loss
from kd_runner.metrics import compute_metrics, per_class_accuracy
from kd_runner.soft_targets import SoftTargets

log = logging.getLogger(__name__)


def run(cfg: RunConfig, run_dir: Path | str) -> dict:
    """Run one experiment into `run_dir`; returns the record also written to result.json."""
    run_dir = Path(run_dir)
    timings = {}
    start = time.perf_counter()
    device = engine.resolve_device(cfg.device)
    data = build_dataset(cfg.dataset)
    device_data = engine.DeviceData(data, device)
    timings["data_s"] = time.perf_counter() - start
    log.info("data: %s, %d train / %d val, %d classes, device %s",
             data.name, len(data.train), len(data.val), data.num_classes, device)

    teacher = prepare_teachers(cfg, data, device_data, cfg.progress)
    timings["teacher_s"] = teacher.seconds

    t0 = time.perf_counter()
    student_data = transfer.transfer_data(cfg, data, device_data)
    if student_data is not device_data:
        log.info("transfer set: %s", transfer.describe(cfg, student_data))
    targets = SoftTargets(teacher.model, student_data)
    history, student = _train_student(cfg, data, student_data, targets)
    timings["student_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start

    save_torch({k: v.detach().cpu() for k, v in student.state_dict().items()}, run_dir / "student.pt")
    rows = [{"stage": "teacher", **r} for r in teacher.history] + [{"stage": "student", **r} for r in history]
    results.write_metrics_csv(run_dir / "metrics.csv", rows)
    record = results.build_record(
        cfg=cfg, history=history, teacher=teacher, student_model=student, device=device, timings=timings
    )
    record["transfer"] = transfer.describe(cfg, student_data)
    record["per_class_accuracy"] = _per_class_accuracy(student, targets, student_data, data.num_classes)
    results.write_result(run_dir / "result.json", record)
    return record


def _train_student(cfg: RunConfig, data, d: engine.DeviceData, targets: SoftTargets):
    """Distill the student from the teacher's logits; the teacher itself never enters the student's graph."""
    engine.seed_everything(cfg.seed)
    student = engine.build_stage_model(cfg.student, data).to(d.device)

    def objective(logits, idx, labels, inputs):
        teacher_logits = None if cfg.alpha == 1 else targets.batch(idx, inputs)  # alpha=1 needs no teacher
        return distillation_loss(logits, teacher_logits, labels, cfg.alpha, cfg.temperature, cfg.soft_loss)

    def evaluate() -> dict:
        logits = engine.predict(student, d, d.val.images)
        return compute_metrics(logits, targets.val, d.val.labels, cfg.alpha, cfg.temperature, cfg.soft_loss)

    history = engine.fit(student, d, cfg.student, cfg.seed, objective, evaluate, "student", cfg.progress)
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
