"""FitNets (Romero et al., ICLR 2015), trained jointly with the student as in mdistiller: a regressor per
layer pair (a 1x1 convolution + BatchNorm, mdistiller's ConvReg) maps the student's map to the teacher's
channels; the hint loss is the MSE between the regressed student map and the teacher's, summed over the
pairs. Default weight: mdistiller's CIFAR-100 FitNet config (100)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.methods.base import FeatureParams, Method


@dataclass
class Params(FeatureParams):
    method: str = field(default="fitnet", metadata={"doc": "fitnet: hint loss on feature maps (docs/methods.md)"})
    weight_hint: float = field(default=100.0, metadata={"doc": "weight of the hint (MSE) loss"})


class FitNet(Method):
    params_type = Params
    parts = ("loss_hint",)
    needs = "maps"

    def trainable(self, student, teacher):
        from torch import nn

        self.regressors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(s.shape[1], t.shape[1], 1, bias=False), nn.BatchNorm2d(t.shape[1]))
            for s, t in zip(student, teacher)
        )
        return self.regressors

    def terms(self, student, teacher, labels, inputs):
        return {"loss_hint": self.params.weight_hint * hint_loss(self.regressors, student, teacher)}


def hint_loss(regressors, student, teacher):
    """Sum over the layer pairs of the MSE between the regressed student map and the teacher's."""
    import torch
    import torch.nn.functional as F

    from kd_runner.methods.features import match_size
    from kd_runner.methods.logits import wide

    losses = []
    for regress, fs, ft in zip(regressors, student, teacher):
        fs, ft = match_size(regress(wide(fs)), wide(ft.detach()))
        losses.append(F.mse_loss(fs, ft))
    return torch.stack(losses).sum()
