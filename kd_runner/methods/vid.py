"""Variational information distillation (Ahn et al., CVPR 2019), as RepDistiller's VIDLoss: per layer pair a
regressor (three 1x1 convolutions with ReLUs, teacher-wide) predicts the mean of the teacher's map from the
student's, with a learned per-channel variance softplus(b) + eps; the term is the Gaussian negative
log-likelihood of the teacher's map (without the constant log(2 pi) / 2), averaged over its entries and summed
over the pairs. Defaults: RepDistiller (VIDLoss: init_pred_var 5, eps 1e-5; scripts/run_cifar_distill.sh: -b 1,
the three stages), the same in mdistiller's CIFAR-100 VID config."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.errors import ConfigError
from kd_runner.methods.base import FeatureParams, Method


@dataclass
class Params(FeatureParams):
    method: str = field(default="vid", metadata={"doc": "vid: variational information distillation (docs/methods.md)"})
    weight_vid: float = field(default=1.0, metadata={"doc": "weight of the VID negative log-likelihood"})
    init_pred_var: float = field(default=5.0, metadata={"doc": "initial predicted variance of the teacher's maps"})
    eps: float = field(default=1e-5, metadata={"doc": "floor added to the predicted variance"})

    def check(self, run) -> None:
        super().check(run)
        if self.init_pred_var <= self.eps:
            raise ConfigError("distill.init_pred_var", self.init_pred_var, f"a number > distill.eps ({self.eps})")


class VID(Method):
    params_type = Params
    parts = ("loss_vid",)
    needs = "stages"

    def trainable(self, student, teacher):
        import math

        import torch
        from torch import nn

        p = self.params
        start = math.log(math.expm1(p.init_pred_var - p.eps))  # softplus(start) + eps = init_pred_var
        self.regressors = nn.ModuleList(_regressor(s.shape[1], t.shape[1]) for s, t in zip(student, teacher))
        self.log_scales = nn.ParameterList(nn.Parameter(torch.full((t.shape[1],), start)) for t in teacher)
        return nn.ModuleDict({"regressors": self.regressors, "log_scales": self.log_scales})

    def terms(self, student, teacher, labels, inputs):
        import torch

        from kd_runner.methods.features import match_size
        from kd_runner.methods.logits import wide

        losses = []
        for regress, log_scale, fs, ft in zip(self.regressors, self.log_scales, student, teacher):
            fs, ft = match_size(wide(fs), wide(ft.detach()))
            losses.append(vid_nll(regress(fs), log_scale, ft, self.params.eps))
        return {"loss_vid": self.params.weight_vid * torch.stack(losses).sum()}


def vid_nll(mean, log_scale, target, eps: float):
    """The mean over the entries of -log N(target; mean, var) + log(2 pi) / 2, var = softplus(log_scale) + eps
    per channel, shared by all positions (the paper's Gaussian variational distribution)."""
    import torch.nn.functional as F

    var = (F.softplus(log_scale.to(mean.dtype)) + eps).view(1, -1, 1, 1)
    return (0.5 * ((mean - target) ** 2 / var + var.log())).mean()


def _regressor(student_channels: int, teacher_channels: int):
    from torch import nn

    def conv(i, o):
        return nn.Conv2d(i, o, 1, bias=False)

    t = teacher_channels
    return nn.Sequential(conv(student_channels, t), nn.ReLU(), conv(t, t), nn.ReLU(), conv(t, t))
