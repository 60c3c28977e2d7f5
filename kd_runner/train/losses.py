"""The distillation objective (one convention, documented in the README):

    loss = alpha * CE(student_logits, y) + (1 - alpha) * soft_loss(student_logits, teacher_logits, T)

``alpha`` weighs the HARD-label cross-entropy: ``alpha=1`` is plain supervised training of the student
(the no-distillation baseline), ``alpha=0`` is pure distillation (labels are not needed).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from kd_runner.names import SOFT_LOSSES


def soft_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float, kind: str) -> Tensor:
    """The soft-target term, a float32 scalar.

    - ``kl`` (Hinton): ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean. The ``T^2`` keeps the
      gradient w.r.t. the student logits of the same size at every T (softening scales it by ``1/T^2``).
    - ``soft_ce``: ``T^2 * mean_i(-sum_c softmax(t/T)_ic * log_softmax(s/T)_ic)``. It differs from ``kl``
      only by ``T^2`` times the softened teacher's entropy, a constant for the student: same gradient.
    - ``mse``: mean squared error between raw logits, over all elements; ignores T.

    The teacher logits are detached here, so no gradient reaches the teacher even if the caller forgot
    ``no_grad``. Everything is computed in float32 so that bf16/fp16 logits do not lose the small soft
    probabilities that carry the "dark knowledge".
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


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor | None,
    labels: Tensor | None,
    alpha: float,
    temperature: float,
    kind: str,
) -> Tensor:
    """``alpha * CE(student, labels) + (1 - alpha) * soft_loss(student, teacher, T, kind)``.

    A term whose weight is zero is not computed at all: with ``alpha == 1`` the result is exactly
    ``F.cross_entropy`` (``teacher_logits`` may be None: the no-distillation baseline needs no teacher),
    with ``alpha == 0`` there is no hard term (``labels`` may be None: unlabeled transfer data).
    """
    if alpha == 1:
        return F.cross_entropy(student_logits.float(), labels)
    soft = soft_loss(student_logits, teacher_logits, temperature, kind)
    if alpha == 0:
        return soft
    hard = F.cross_entropy(student_logits.float(), labels)
    return alpha * hard + (1 - alpha) * soft
