"""Use what a run made: its student as a ready `nn.Module`, or evaluated on a dataset's validation split.

A run directory's result.json holds the config, the data's shape and normalisation and the teacher's cache
key, so the student is rebuilt without the data; `evaluate` also runs the teacher when it is still in the
cache, for the same metrics as training. Nothing here knows Hydra (kd-eval's command line: cli/eval.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from kd_runner import methods
from kd_runner.config import RunConfig, load_config
from kd_runner.data import build_dataset
from kd_runner.data.normalize import normalized
from kd_runner.data.splits import InMemoryData
from kd_runner.errors import UserError
from kd_runner.methods import objective
from kd_runner.models import build_stage_model
from kd_runner.runtime.compute import Compute, resolve_device
from kd_runner.status import Status
from kd_runner.store import rundir
from kd_runner.store.state_dicts import load_exact, read_state_dict
from kd_runner.teacher.stage import cache_entry
from kd_runner.train import engine
from kd_runner.train.metrics import accuracy, compute_metrics, top5_accuracy


class NormalizedModel(nn.Module):
    """A network with the normalisation it was trained with: it takes images as the dataset gives them
    (N x C x H x W, float in [0, 1] or uint8 in [0, 255]) and returns logits."""

    def __init__(self, model: nn.Module, mean: list[float], std: list[float]):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(normalized(images, self.mean, self.std))


@dataclass(frozen=True)
class RunFiles:
    """What kd-eval and `load_student` read of a run: the directory named (kd-eval writes there), and the
    record and weights of the student it names; for a job that reused an equal job's results (alpha=1
    jobs that differ only in T or the soft loss), that job's: `owner`."""

    run_dir: Path
    record: dict
    weights: Path
    owner: Path | None = None


def locate(path: Path | str, weights: str = "student.pt") -> RunFiles:
    """The run of a run directory (its `weights`) or of a weights file in one; UserError (one line) when
    there is no completed run's student there, saying why."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{str(path)!r}: no such run directory or student weights file")
    run_dir, name = (path, weights) if path.is_dir() else (path.parent, path.name)
    record, owner = completed_record(run_dir), None
    if "reused_from" in record:
        owner, record = reused_owner(run_dir, record)
    student_dir = owner or run_dir
    if not (student_dir / name).is_file():
        raise UserError(f"{student_dir} holds a completed run but no {name} (its weights were moved or deleted)")
    return RunFiles(run_dir, record, student_dir / name, owner)


def completed_record(run_dir: Path) -> dict:
    """The result.json of the completed run in `run_dir` (UserError for anything else, saying what is there)."""
    record = rundir.previous_record(run_dir)
    if record is None:
        below = sorted(run_dir.rglob(rundir.RESULT))  # a sweep's jobs, a search's trials, a trial's seeds
        if below:
            raise UserError(
                f"{run_dir} holds no run of its own but {len(below)} in its subdirectories (e.g. "
                f"{below[0].parent}): give one of them"
            )
        raise UserError(f"{run_dir} holds no completed kd-run run (no result.json)")
    status = record.get("status")
    if status != Status.COMPLETED:
        why = STATUS_HINTS.get(status) or " ".join(str(record.get("message", "")).split())[:200]
        raise UserError(f"{run_dir} holds no completed kd-run run (status {status}{': ' + why if why else ''})")
    return record


STATUS_HINTS = {  # what to do about a run that left no student to evaluate
    Status.RUNNING: "still running, or killed: run its kd-run command again to finish it",
    Status.INTERRUPTED: "run its kd-run command again to resume it",
}


def reused_owner(run_dir: Path, record: dict) -> tuple[Path, dict]:
    """(directory, record) of the job of the same sweep whose completed run `run_dir`'s job reused (its
    `reused_from`), found beside it, so a moved sweep still finds it; its result key must be this job's."""
    owner = run_dir.parent / Path(record["reused_from"]).name
    other = rundir.previous_record(owner)
    if other is None or other.get("status") != Status.COMPLETED or other.get("result_key") != record.get("result_key"):
        raise UserError(
            f"{run_dir} reused the results of {record['reused_from']}, and {owner} holds no completed run of "
            f"its result key {record.get('result_key')}: evaluate a job that trained its student"
        )
    return owner, other


def load_student(run_dir: Path | str, weights: str = "student.pt", device: str = "cpu") -> nn.Module:
    """The student of a completed run (`weights`: student.pt, or student_best.pt for the best epoch) with
    its normalisation, in eval mode on `device`: `model(images)` gives logits. It is rebuilt from the
    run's own record (a job that reused another's results: that job's student)."""
    files = locate(run_dir, weights)
    shape = SimpleNamespace(**files.record["data"])
    student = build_student(load_config(files.record["config"]), shape, files.weights)
    return NormalizedModel(student, shape.mean, shape.std).to(device).eval()


def build_student(cfg: RunConfig, data, weights: Path) -> nn.Module:
    """The run's student network shaped for `data` (in_channels, num_classes, image_size) with `weights`."""
    model = build_stage_model(dataclasses.replace(cfg.student, pretrained=False, weights_path=None), data)
    load_exact(
        model,
        read_state_dict(weights, "checkpoint"),
        f"{weights} does not fit student {cfg.student.name} on dataset {data.name} ({data.in_channels} "
        f"channels, {data.num_classes} classes, {data.image_size} px)",
    )
    return model


def cached_teacher(cfg: RunConfig, record: dict, data) -> nn.Module | None:
    """The run's fine-tuned teacher from the cache, or None (another cache, an ensemble, a checkpoint)."""
    loaded = cache_entry(cfg, record["teacher"]["cache_key"], "evaluating without the teacher").load()
    if loaded is None:
        return None
    model = build_stage_model(dataclasses.replace(cfg.teacher, pretrained=False, weights_path=None), data)
    return model if load_exact(model, loaded[0]) else None


def evaluate(cfg: RunConfig, files: RunFiles) -> dict:
    """The run's student (`files.weights`), and its teacher when cached, on the validation split of
    `cfg.dataset`: the training metrics, or the student's own ones (student_acc, student_loss, top-5)
    without a teacher. The images are normalised with the run's statistics, as its networks learnt them
    (and as `load_student` does), whatever dataset they come from."""
    record, weights = files.record, files.weights
    compute = Compute.resolve(resolve_device(cfg.device), cfg.precision, cfg.memory_format, False)
    trained = record["data"]
    data = dataclasses.replace(build_dataset(cfg.dataset), mean=tuple(trained["mean"]), std=tuple(trained["std"]))
    d = InMemoryData(data, compute)
    student = compute.prepare(build_student(cfg, data, weights))
    student_logits = engine.predict(student, d, d.val.images)
    teacher = cached_teacher(cfg, record, data)
    if teacher is None:
        metrics = student_metrics(student_logits, d.val.labels)
    else:
        teacher = compute.prepare(teacher).eval()  # as in training: its features with running statistics
        teacher_logits = engine.predict(teacher, d, d.val.images)
        value = run_objective(cfg, weights.parent, student, teacher, d, student_logits, teacher_logits)
        metrics = compute_metrics(student_logits, teacher_logits, d.val.labels, value)
    return {
        "run_dir": str(files.run_dir),
        "weights": str(weights),
        **({"reused_from": str(files.owner)} if files.owner else {}),
        "dataset": data.name,
        "samples": len(data.val),
        "teacher": teacher is not None,
        "metrics": metrics,
    }


def run_objective(cfg: RunConfig, run_dir: Path, student, teacher, d, logits, teacher_logits) -> float:
    """The run's objective on this validation split, computed by its method as in training, at its final
    epoch (a warm-up's weight), with the method's trained parameters (distill.pt) when it has some."""
    method = methods.make(cfg.distill, cfg.temperature, cfg.soft_loss)
    method.start_epoch(max(cfg.student.epochs, 1))
    targets = SimpleNamespace(teacher=teacher, val_targets=teacher_logits, data=d)
    model, loss = objective.build(method, cfg.alpha, student, targets, d, cfg.student.batch_size)
    try:
        if model.state.trainable is not None:
            weights = run_dir / "distill.pt"
            misfit = f"{weights} does not fit distill={cfg.distill.method}'s parameters"
            load_exact(model.state.trainable, read_state_dict(weights, "checkpoint"), misfit)
        return loss.validation(model, d, logits, d.val.labels)
    finally:
        loss.close()


def student_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """student_acc, student_loss and (more than 5 classes) student_acc_top5, as in training."""
    metrics = {
        "student_acc": accuracy(logits, labels),
        "student_loss": nn.functional.cross_entropy(logits, labels).item(),
    }
    if logits.shape[-1] > 5:
        metrics["student_acc_top5"] = top5_accuracy(logits, labels)
    return metrics
