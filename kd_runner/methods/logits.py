"""The logit maths several methods share: Hinton's soft loss, logit standardisation, and float32 (or float64)
arithmetic for the small probabilities that carry the "dark knowledge"."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kd_runner.names import SOFT_LOSSES


def wide(x: Tensor) -> Tensor:
    """`x` in float32, or float64 if it is float64 already (half precision loses the small probabilities)."""
    return x if x.dtype == torch.float64 else x.float()


def soft_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, kind: str) -> Tensor:
    """The soft-target term, a float32 scalar.

    - ``kl`` (Hinton): ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean. The ``T^2`` keeps the
      gradient w.r.t. the student logits of the same size at every T (softening scales it by ``1/T^2``).
    - ``soft_ce``: ``T^2 * mean_i(-sum_c softmax(t/T)_ic * log_softmax(s/T)_ic)``. It differs from ``kl``
      only by ``T^2`` times the softened teacher's entropy, a constant for the student: same gradient.
    - ``mse``: mean squared error between raw logits, over all elements; ignores T.

    The teacher logits are detached here, so no gradient reaches the teacher even if the caller forgot
    ``no_grad``.
    """
    if kind not in SOFT_LOSSES:
        raise ValueError(f"unknown soft loss kind {kind!r}; expected one of {SOFT_LOSSES}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape"
        )
    student = student_logits.float()
    teacher = teacher_logits.detach().float()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    log_p_student = F.log_softmax(student / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
    scale = temperature * temperature
    if kind == "kl":
        return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * scale
    return -(log_p_teacher.exp() * log_p_student).sum(dim=-1).mean() * scale


def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each sample's logits over the classes (Sun et al., "Logit Standardization in Knowledge
    Distillation", CVPR 2024, Algorithm 1: ``(z - mean(z)) / std(z)``, unbiased std, ``eps`` as in their
    code). The softmax of the result no longer depends on the logits' shift or scale."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def standardized(enabled: bool, student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Both models' logits z-scored when `enabled` (distill.standardize), else as they are."""
    return (standardize(student), standardize(teacher.detach())) if enabled else (student, teacher)
