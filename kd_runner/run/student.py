"""The student's side of a run: the checks that need the data, its training, and what it leaves.

Kept apart from run.py because the distillation methods shape all of it (their layers, their objective,
their trained parameters such as FitNets' regressors beside student.pt).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import nn

from kd_runner.config import RunConfig
from kd_runner.data.splits import SplitData
from kd_runner.methods import PART_COLUMNS, objective
from kd_runner.methods import make as make_method
from kd_runner.models import build_stage_model, classifier_head
from kd_runner.run import results
from kd_runner.runtime.rng import seed_everything
from kd_runner.store import rundir
from kd_runner.store.files import save_torch, write_json
from kd_runner.teacher.soft_targets import SoftTargets
from kd_runner.train import engine
from kd_runner.train.metrics import compute_metrics


def check_student_side(cfg: RunConfig, data, split_data: SplitData, student_data: SplitData, shard) -> None:
    """Mistakes that would only show in the student stage: too few samples for a step, weights that do not
    fit, a feature layer that is not there."""
    engine.check_steps(len(split_data.train), cfg.teacher, shard, "teacher")
    engine.check_steps(len(student_data.train), cfg.student, shard, "student")
    if cfg.student.weights_path or cfg.student.pretrained:
        build_stage_model(cfg.student, data, "student")
    method = check_layers(cfg, data, split_data)
    if cfg.alpha < 1 and method.checks_a_batch:  # so does a user objective that gives no loss
        student = build_stage_model(
            dataclasses.replace(cfg.student, pretrained=False, weights_path=None), data, "student"
        )
        objective.check_on_batch(method, student.to(student_data.device), student_data)


def check_layers(cfg: RunConfig, data, split_data: SplitData):
    """The configured method (returned), its feature layers resolved on freshly built networks of both
    architectures, for its distillation and its init stage (one line if wrong)."""
    method = make_method(cfg.distill, cfg.temperature, cfg.soft_loss)
    if method.needs != "logits":
        _check_layers(cfg, method, data, split_data)
    if method.has_init:
        _check_layers(cfg, objective.InitTerms(method), data, split_data)
    return method


def _check_layers(cfg: RunConfig, method, data, split_data: SplitData) -> None:
    """Resolve the feature method's layers on freshly built models of both architectures (one line if wrong)."""
    stages = {
        name: dataclasses.replace(getattr(cfg, name), pretrained=False, weights_path=None)
        for name in ("student", "teacher")
    }  # the architectures only
    models = [build_stage_model(stage, data, name).to(split_data.device) for name, stage in stages.items()]
    layers = cfg.distill.student_layers, cfg.distill.teacher_layers
    taps = objective.feature_taps(method, *layers, *models, objective.sample_batch(split_data))
    for tap in taps:
        tap.remove()
    if isinstance(method, objective.InitTerms):  # its modules must fit the layers' shapes (FSP: equal widths)
        method.trainable(taps[0].features(), taps[1].features())


def train_student(cfg: RunConfig, data, d: SplitData, targets: SoftTargets, checkpoints: dict, stop, recorder):
    """Distill the student with the configured method (kd_runner.methods), after the method's init stage if it
    has one; the teacher itself never enters the student's graph. The method's state trains and is
    checkpointed with the student; `checkpoints`: each stage's (init, student), none across processes.

    After every epoch `recorder` writes its metrics; the best validation student so far is kept in memory
    and written as student_best.pt before each checkpoint (a resume never misses it) and once at the end."""
    seed_everything(cfg.seed)
    student = d.compute.prepare(build_stage_model(cfg.student, data, "student"))
    method = make_method(cfg.distill, cfg.temperature, cfg.soft_loss)
    if method.has_init:
        train_init(cfg, method, student, d, targets, checkpoints.get("init"), stop, recorder)
    model, loss = objective.build(method, cfg.alpha, student, targets, d, cfg.student.batch_size)
    validate = student_validation(model, student, loss, targets, d)
    best = BestStudent(student, recorder.run_dir)

    def on_epoch(rows: list[dict]) -> None:
        recorder.record("student", rows)
        best.update(rows)

    try:
        history = engine.fit(
            d.shard.wrap(model),
            d,
            stage="student",
            recipe=cfg.student,
            seed=cfg.seed,
            loss_fn=loss,
            validate=validate,
            on_epoch_start=method.start_epoch,
            checkpoint_every_s=cfg.checkpoint_every_s,
            on_save=best.write,
            progress=cfg.progress,
            checkpoint=checkpoints.get("student"),
            stop=stop,
            on_epoch=on_epoch,
            temperature=cfg.temperature if cfg.alpha < 1 else None,
            weights=_method_weights(cfg.distill) if cfg.alpha < 1 else None,
            objective=getattr(cfg.distill, "objective", {}).get("_target_") if cfg.alpha < 1 else None,
        )
        if not history:  # student.epochs=0: evaluate the untrained (or pretrained) student once
            history = [{"epoch": 0, "lr": None, "train_loss": None, **validate()}]
            on_epoch(history)
        if cfg.transfer.omitted_bias is not None:  # the final metrics are those of the corrected student
            history[-1]["omitted_bias"] = raise_omitted_bias(cfg, student, targets.teacher, d)
            history[-1].update({k: v for k, v in validate().items() if k not in PART_COLUMNS})  # parts: the epoch's
    finally:  # however the stage ends: the hooks leave the (possibly shared) teacher, the best student is kept
        loss.close()
        best.write()
    return history, student, model.state


class BestStudent:
    """The student of the best validation student_acc so far (results.best_row), kept in memory (a copy on its
    device: no host sync per epoch) and written to the run's student_best.pt only when asked."""

    def __init__(self, student: nn.Module, run_dir: Path | None):
        self.student, self.run_dir, self.state = student, run_dir, None

    def update(self, rows: list[dict]) -> None:
        if self.run_dir is not None and results.best_row(rows) is rows[-1]:
            self.state = {k: v.detach().clone() for k, v in self.student.state_dict().items()}

    def write(self) -> None:
        """student_best.pt, when a new best was found since the last write."""
        if self.state is not None:
            save_torch({k: v.cpu() for k, v in self.state.items()}, self.run_dir / results.BEST_STUDENT)
            self.state = None


def train_init(cfg: RunConfig, method, student, d: SplitData, targets: SoftTargets, checkpoint, stop, recorder):
    """The method's init stage (RepDistiller's `init`): its init terms train its own modules and, unless it says
    otherwise, the student's layers below the hooked ones, at a constant learning rate for `init_epochs`; its
    rows are recorded with stage "init". A finished stage restored from `checkpoint` trains nothing again."""
    model, loss = objective.build_init(method, student, targets, d, cfg.student.batch_size)
    trains = [p.requires_grad for p in student.parameters()]
    if not method.init_trains_student:
        student.requires_grad_(False)
    p = cfg.distill
    recipe = dataclasses.replace(cfg.student, epochs=p.init_epochs, lr=p.init_lr or cfg.student.lr, scheduler="none")
    try:
        history = engine.fit(
            d.shard.wrap(model),
            d,
            stage="init",
            recipe=recipe,
            seed=cfg.seed,
            loss_fn=loss,
            validate=student_validation(model, student, loss, targets, d),
            progress=cfg.progress,
            checkpoint=checkpoint,
            stop=stop,
            on_epoch=lambda rows: recorder.record("init", rows),
        )  # saved after every epoch: a resume finds the stage's end and goes on to the student stage
    finally:
        loss.close()
        for param, flag in zip(student.parameters(), trains):
            param.requires_grad_(flag)
    recorder.record("init", history)  # a resumed, finished stage trains no epoch: its rows come from its checkpoint


def student_validation(model, student, loss, targets: SoftTargets, d: SplitData):
    """The student's validation after an epoch: the metrics, the objective at this epoch's weights (a
    warm-up's), and the epoch's mean of each part of the training loss; no training state changes."""

    def validate() -> dict:
        parts = model.state.take_parts(d.shard)  # before rank 0's buffers (the tally among them) replace the others'
        d.shard.sync_buffers(model)
        logits = engine.predict(student, d, d.val.images)
        value = loss.validation(model, d, logits, d.val.labels)  # at this epoch's warm-up
        return {**compute_metrics(logits, targets.val, d.val.labels, value), **parts}

    return validate


def write_outputs(run_dir: Path, record: dict, student, state, stage_rows: dict, checkpoints: dict) -> None:
    """The run's files; `stage_rows`: each stage's rows in the order they ran (teacher, init, student)."""
    save_torch(_cpu_state(student), run_dir / "student.pt")
    if state.trainable is not None:  # the method's trained parameters (FitNets' regressors), beside the student
        save_torch(_cpu_state(state.trainable), run_dir / "distill.pt")
    rows = [{"stage": stage, **r} for stage, stage_rows in stage_rows.items() for r in stage_rows]
    results.write_metrics_csv(run_dir / "metrics.csv", rows)
    write_json(run_dir / rundir.RESULT, record)
    for checkpoint in checkpoints.values():
        checkpoint.remove()  # the completed record is final: the run will not resume again


def _cpu_state(model: torch.nn.Module) -> dict:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def raise_omitted_bias(cfg: RunConfig, student: nn.Module, teacher: nn.Module, d: SplitData) -> dict[int, float]:
    """Raise the student's output bias of each class left out of the transfer set (Hinton's correction: the
    student, taught those classes by soft targets only, predicts them too rarely); returns class -> amount.

    A number is added as given (Hinton et al. raised the 3s' bias by 3.5). `auto` corrects the prior the
    student was trained under: a left-out class c made up only `share_c = (1 - alpha) * mean_x softmax(t(x)/T)_c`
    of its training targets (the soft targets' part; no hard label is c) instead of an equal share 1/K of
    the data, and the student matched those targets at temperature T, so its logit of c is raised by
    `T * log((1/K) / share_c)`. It reads the teacher's outputs on the transfer inputs only, no label.
    """
    t = cfg.transfer
    if t.omitted_bias == "auto":
        soft = (engine.predict(teacher, d, d.train.images) / cfg.temperature).softmax(1)
        share = (1 - cfg.alpha) * soft.mean(0)
        prior = 1 / soft.shape[1]
        amounts = {c: cfg.temperature * math.log(prior / float(share[c])) for c in t.exclude_classes}
    else:
        amounts = dict.fromkeys(t.exclude_classes, float(t.omitted_bias))
    output_layer = [m for m in classifier_head(student).modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        for c, amount in amounts.items():
            output_layer.bias[c] += amount
    return amounts


def _method_weights(params) -> dict[str, tuple[float, float]]:
    """The method's number settings with their defaults, {distill.KEY: (value, default)}, for a divergence hint."""
    return {
        f"distill.{f.name}": (getattr(params, f.name), f.default)
        for f in dataclasses.fields(params)
        if isinstance(f.default, float)
    }
