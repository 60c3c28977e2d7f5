"""Decoupled KD (Zhao et al., CVPR 2022): the KD loss split into a target-class term (TCKD) and a
non-target-class term (NCKD), weighed separately, with a linear warm-up of both over the first epochs.
Defaults: mdistiller's CIFAR-100 configs (configs/cifar100/dkd/*: alpha 1, beta 8, warmup 20)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.errors import ConfigError
from kd_runner.methods.base import LogitParams, Method


@dataclass
class Params(LogitParams):
    method: str = field(default="dkd", metadata={"doc": "dkd: decoupled KD (docs/methods.md)"})
    weight_tckd: float = field(default=1.0, metadata={"doc": "weight of the target-class term (the paper's alpha)"})
    weight_nckd: float = field(default=8.0, metadata={"doc": "weight of the non-target-class term (the paper's beta)"})
    warmup: int = field(default=20, metadata={"doc": "epochs over which the DKD term grows linearly to full weight"})

    def check(self, run) -> None:
        super().check(run)
        if self.warmup < 0:
            raise ConfigError("distill.warmup", self.warmup, "a whole number >= 0 (0: no warm-up)")
        if not run.transfer.labeled:
            raise ConfigError("distill.method", "dkd", "not dkd with transfer.labeled=false (DKD needs the labels)")


class DKD(Method):
    params_type = Params
    parts = ("loss_tckd", "loss_nckd")

    def terms(self, student, teacher, labels, inputs):
        from kd_runner.methods.logits import standardized

        p = self.params
        student, teacher = standardized(p.standardize, student, teacher)
        tckd, nckd = dkd_terms(student, teacher, labels, self.temperature)
        warm = min(self.epoch / p.warmup, 1.0) if p.warmup else 1.0  # the paper's warm-up
        scale = self.temperature * self.temperature * warm
        return {"loss_tckd": p.weight_tckd * scale * tckd.mean(), "loss_nckd": p.weight_nckd * scale * nckd.mean()}


def dkd_terms(student, teacher, labels, temperature: float):
    """Per-sample TCKD and NCKD (the paper's Eq. 1-4), without the T^2 factor.

    TCKD = KL(b_T || b_S) over the binary split (target class, all others) of the softened predictions;
    NCKD = KL(p^_T || p^_S) over the non-target classes renormalised among themselves. The paper's
    identity KD = TCKD + (1 - p_t^T) * NCKD holds per sample.
    """
    import torch
    import torch.nn.functional as F

    from kd_runner.methods.logits import wide

    s, t = wide(student) / temperature, wide(teacher.detach()) / temperature
    others = torch.arange(s.shape[-1] - 1, device=s.device)
    rest = others + (others >= labels[:, None])  # the non-target classes of each sample, in order (no host sync)
    binary_s, binary_t = _binary_log_probs(s, labels, rest), _binary_log_probs(t, labels, rest)
    tckd = (binary_t.exp() * (binary_t - binary_s)).sum(dim=-1)
    log_rest_s = F.log_softmax(s.gather(1, rest), dim=-1)
    log_rest_t = F.log_softmax(t.gather(1, rest), dim=-1)
    nckd = (log_rest_t.exp() * (log_rest_t - log_rest_s)).sum(dim=-1)
    return tckd, nckd


def _binary_log_probs(scaled, labels, rest):
    """log [p_target, 1 - p_target] of softmax(scaled), computed with log-sum-exp for stability."""
    import torch

    total = torch.logsumexp(scaled, dim=-1)
    log_target = scaled.gather(1, labels[:, None]).squeeze(1) - total
    log_rest = torch.logsumexp(scaled.gather(1, rest), dim=-1) - total
    return torch.stack([log_target, log_rest], dim=-1)
