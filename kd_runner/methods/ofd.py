"""Overhaul of feature distillation (Heo et al., ICCV 2019), as mdistiller's OFD: per stage a connector
(1x1 convolution + BatchNorm) maps the student's map to the teacher's channels; the teacher's map goes through
the margin ReLU max(x, m), m = E[x | x < 0] per channel from the BatchNorm before the teacher's ReLU; the
partial L2 distance skips the positions where both are at or below it (student <= target <= 0). Stages weigh
1/2 per stage from the deepest; the sum is over channels and positions, the mean over the batch.

Hooks see module outputs, not the pre-ReLU sums inside a block, so two documented approximations: m comes
from the last BatchNorm of the hooked teacher layer outside its shortcut (for the CIFAR ResNets exactly
mdistiller's get_bn_before_relu; a standard normal's -sqrt(2/pi) where the layer has no fitting BatchNorm),
and where the hooked teacher map is post-ReLU its zeros, the unseen negative pre-activations, are taken to be
m, their expected value (a pre-ReLU map, e.g. VGG's blocks, is used as it is). Default weight: mdistiller's
CFG.OFD.LOSS.FEAT_WEIGHT (0.001)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.methods.base import FeatureParams, Method


@dataclass
class Params(FeatureParams):
    method: str = field(default="ofd", metadata={"doc": "ofd: overhaul of feature distillation (docs/methods.md)"})
    weight_ofd: float = field(default=0.001, metadata={"doc": "weight of the partial L2 loss"})


class OFD(Method):
    params_type = Params
    parts = ("loss_ofd",)
    needs = "stages"

    def trainable(self, student, teacher):
        from torch import nn

        self.connectors = nn.ModuleList(_connector(s.shape[1], t.shape[1]) for s, t in zip(student, teacher))
        self.state = nn.Module()
        self.state.connectors = self.connectors
        for i, (layer, t) in enumerate(zip(self.layers[1] or [None] * len(teacher), teacher)):
            self.state.register_buffer(f"margin{i}", margin(_bn_before_relu(layer, t.shape[1]), t.shape[1]))
        return self.state

    def terms(self, student, teacher, labels, inputs):
        import torch

        from kd_runner.methods.features import match_size
        from kd_runner.methods.logits import wide

        losses, n = [], len(student)
        for i, (connect, fs, ft) in enumerate(zip(self.connectors, student, teacher)):
            m = getattr(self.state, f"margin{i}").view(1, -1, 1, 1).to(wide(fs).dtype)
            ft = wide(ft.detach())
            fs, ft = match_size(connect(wide(fs)), torch.where(ft == 0, m, ft))
            losses.append(partial_l2(fs, ft, m) / 2 ** (n - 1 - i))
        return {"loss_ofd": self.params.weight_ofd * torch.stack(losses).sum()}


def partial_l2(student, teacher, m):
    """The paper's Eq. 4: sum of (T - S)^2 over the positions except where S <= T <= 0, T = max(teacher, m);
    mean over the batch."""
    target = teacher.maximum(m)
    keep = (student > target) | (target > 0)
    return ((student - target) ** 2 * keep).flatten(1).sum(1).mean()


def margin(bn, channels: int):
    """E[x | x < 0] per channel for x ~ N(beta, gamma^2) of `bn` (the paper's Eq. 2; mdistiller: -3 |gamma|
    where P(x < 0) <= 0.001); a standard normal's when `bn` is None."""
    import math

    import torch

    if bn is None:
        return torch.full((channels,), -math.sqrt(2 / math.pi))
    s, m = bn.weight.detach().abs().double().cpu(), bn.bias.detach().double().cpu()
    below = torch.special.ndtr(-m / s)
    density = torch.exp(-((m / s) ** 2) / 2) / math.sqrt(2 * math.pi)
    return torch.where(below > 0.001, m - s * density / below, -3 * s).float()


def _bn_before_relu(layer, channels: int):
    """The last BatchNorm2d of `layer` (itself included) outside a shortcut branch, with `channels` features."""
    from torch import nn

    if layer is None:
        return None
    found = [
        module
        for name, module in layer.named_modules()
        if isinstance(module, nn.BatchNorm2d) and not {"downsample", "shortcut"} & set(name.split("."))
    ]
    fits = [bn for bn in found if bn.num_features == channels and bn.affine]
    return fits[-1] if fits else None


def _connector(student_channels: int, teacher_channels: int):
    """mdistiller's ConnectorConvBN (kernel 1), with its initialisation."""
    import math

    from torch import nn

    conv = nn.Conv2d(student_channels, teacher_channels, 1, bias=False)
    nn.init.normal_(conv.weight, 0, math.sqrt(2.0 / teacher_channels))
    return nn.Sequential(conv, nn.BatchNorm2d(teacher_channels))
