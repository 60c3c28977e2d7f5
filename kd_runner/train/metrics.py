"""Validation metrics. Their names are part of the interface (CSV columns, sweep summaries)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_runner.methods.logits import soft_loss


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy as a fraction in [0, 1]. No samples is an error, not a silent NaN."""
    if labels.numel() == 0:
        raise ValueError("accuracy of an empty set of samples is undefined")
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def top5_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Fraction of samples whose label is among the 5 highest logits (needs more than 5 classes)."""
    top5 = logits.topk(5, dim=-1).indices
    return (top5 == labels.unsqueeze(-1)).any(dim=-1).float().mean().item()


def compute_metrics(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    objective: float,
) -> dict[str, float]:
    """All METRIC_NAMES over the whole validation split at once, as python floats, and TOP5_NAMES when
    there are more than 5 classes.

    Computed the same way for every alpha, so that runs of a sweep are comparable: ``student_loss`` is
    the plain cross-entropy whatever the alpha; ``objective``, the run's own training objective on the
    validation split, is computed by its method (kd_runner.methods.objective) and placed among them.
    Work is done in float32 and without autograd.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    with torch.no_grad():
        student = student_logits.detach().float()
        teacher = teacher_logits.detach().float()
        metrics = {
            "student_acc": accuracy(student, labels),
            "teacher_acc": accuracy(teacher, labels),
            "student_loss": F.cross_entropy(student, labels).item(),
            "objective": objective,
            "logit_gap": (teacher - student).abs().mean().item(),
            "kl_teacher_student": soft_loss(student, teacher, 1.0, "kl").item(),
            "agreement": (student.argmax(dim=-1) == teacher.argmax(dim=-1)).float().mean().item(),
        }
        if student.shape[-1] > 5:
            metrics |= {
                "student_acc_top5": top5_accuracy(student, labels),
                "teacher_acc_top5": top5_accuracy(teacher, labels),
            }
        return metrics


def per_class_accuracy(logits: Tensor, labels: Tensor, num_classes: int) -> list[float | None]:
    """Top-1 accuracy of each class; None for a class without samples (0 would read as a failure)."""
    correct_labels = labels[logits.argmax(dim=-1) == labels]
    totals = torch.bincount(labels, minlength=num_classes)[:num_classes].tolist()
    corrects = torch.bincount(correct_labels, minlength=num_classes)[:num_classes].tolist()
    return [None if total == 0 else correct / total for correct, total in zip(corrects, totals)]
