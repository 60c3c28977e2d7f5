"""The logit-based distillation terms beyond Hinton's KD, written from their papers' equations.

Each function takes student and teacher logits (N x C) and returns the terms in at least float32
(float64 stays float64, so the tests can check them to 1e-6); the caller weighs them
(kd_runner.train.distill). The teacher logits are detached here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def wide(x: Tensor) -> Tensor:
    """`x` in float32, or float64 if it is float64 already (half precision loses the small probabilities)."""
    return x if x.dtype == torch.float64 else x.float()


def standardize(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each sample's logits over the classes (Sun et al., "Logit Standardization in Knowledge
    Distillation", CVPR 2024, Algorithm 1: ``(z - mean(z)) / std(z)``, unbiased std, ``eps`` as in their
    code). The softmax of the result no longer depends on the logits' shift or scale."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def dkd_terms(student: Tensor, teacher: Tensor, labels: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Per-sample TCKD and NCKD of Decoupled KD (Zhao et al., CVPR 2022, Eq. 1-4), without the T^2 factor.

    TCKD = KL(b_T || b_S) over the binary split (target class, all others) of the softened predictions;
    NCKD = KL(p^_T || p^_S) over the non-target classes renormalised among themselves. The paper's
    identity KD = TCKD + (1 - p_t^T) * NCKD holds per sample.
    """
    s, t = wide(student) / temperature, wide(teacher.detach()) / temperature
    target = F.one_hot(labels, s.shape[-1]).bool()
    rest = (~target).nonzero()[:, 1].view(len(s), -1)  # the non-target classes of each sample
    binary_s, binary_t = _binary_log_probs(s, labels, rest), _binary_log_probs(t, labels, rest)
    tckd = (binary_t.exp() * (binary_t - binary_s)).sum(dim=-1)
    log_rest_s = F.log_softmax(s.gather(1, rest), dim=-1)
    log_rest_t = F.log_softmax(t.gather(1, rest), dim=-1)
    nckd = (log_rest_t.exp() * (log_rest_t - log_rest_s)).sum(dim=-1)
    return tckd, nckd


def _binary_log_probs(scaled: Tensor, labels: Tensor, rest: Tensor) -> Tensor:
    """log [p_target, 1 - p_target] of softmax(scaled), computed with log-sum-exp for stability."""
    total = torch.logsumexp(scaled, dim=-1)
    log_target = scaled.gather(1, labels[:, None]).squeeze(1) - total
    log_rest = torch.logsumexp(scaled.gather(1, rest), dim=-1) - total
    return torch.stack([log_target, log_rest], dim=-1)


def dist_terms(student: Tensor, teacher: Tensor, temperature: float, eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """Inter- and intra-class relation losses of DIST (Huang et al., NeurIPS 2022, Eq. 5-7), T^2-scaled
    as in the authors' code: 1 - mean Pearson correlation of the softened predictions per sample (over
    the classes), and per class (over the batch)."""
    p_s = F.softmax(wide(student) / temperature, dim=-1)
    p_t = F.softmax(wide(teacher.detach()) / temperature, dim=-1)
    scale = temperature * temperature
    inter = 1 - _pearson(p_s, p_t, eps).mean()
    intra = 1 - _pearson(p_s.T, p_t.T, eps).mean()
    return inter * scale, intra * scale


def _pearson(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """Pearson correlation of each row of `a` with the same row of `b`."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
