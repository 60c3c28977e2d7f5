"""One knowledge-distillation run: data -> teacher stage -> student stage -> results.

`run(cfg, run_dir)` is the whole experiment; the CLI only composes and validates the config and calls it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from kd_runner import engine, results
from kd_runner.config import RunConfig
from kd_runner.data import build_dataset
from kd_runner.files import save_torch
from kd_runner.losses import distillation_loss
from kd_runner.metrics import compute_metrics
from kd_runner.teacher import prepare_teacher

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

    teacher = prepare_teacher(cfg, data, device_data, cfg.progress)
    timings["teacher_s"] = teacher.seconds

    t0 = time.perf_counter()
    teacher_train = engine.predict(teacher.model, device_data, device_data.train.images)
    teacher_val = engine.predict(teacher.model, device_data, device_data.val.images)
    history, student = _train_student(cfg, data, device_data, teacher_train, teacher_val)
    timings["student_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start

    save_torch({k: v.detach().cpu() for k, v in student.state_dict().items()}, run_dir / "student.pt")
    rows = [{"stage": "teacher", **r} for r in teacher.history] + [{"stage": "student", **r} for r in history]
    results.write_metrics_csv(run_dir / "metrics.csv", rows)
    record = results.build_record(
        cfg=cfg, history=history, teacher=teacher, student_model=student, device=device, timings=timings
    )
    results.write_result(run_dir / "result.json", record)
    return record


def _train_student(cfg: RunConfig, data, d: engine.DeviceData, teacher_train, teacher_val):
    """Distill the student from the teacher's logits; the teacher itself never enters the student's graph."""
    engine.seed_everything(cfg.seed)
    student = engine.build_stage_model(cfg.student, data).to(d.device)

    def objective(logits, idx, labels):
        return distillation_loss(logits, teacher_train[idx], labels, cfg.alpha, cfg.temperature, cfg.soft_loss)

    def evaluate() -> dict:
        logits = engine.predict(student, d, d.val.images)
        return compute_metrics(logits, teacher_val, d.val.labels, cfg.alpha, cfg.temperature, cfg.soft_loss)

    history = engine.fit(student, d, cfg.student, cfg.seed, objective, evaluate, "student", cfg.progress)
    if not history:  # student.epochs=0: evaluate the untrained (or pretrained) student once
        history = [{"epoch": 0, "lr": None, "train_loss": None, **evaluate()}]
    return history, student
