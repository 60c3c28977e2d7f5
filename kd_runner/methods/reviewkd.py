"""Knowledge review (Chen et al., CVPR 2021), as mdistiller's ReviewKD: the student's stages and its pooled
feature (as a 1 x 1 map) are fused from the deepest to the shallowest by attention-based fusion (ABF: a 1x1
convolution, a pixel-wise attention mixing it with the upsampled fusion of the level below, then a 3x3
convolution to the teacher's channels and size); each fused map matches the teacher's map of the same level
by the hierarchical context loss (HCL: MSE on the map and on its average pools to 4x4, 2x2 and 1x1, weighted
1, 1/2, 1/4, 1/8 and normalised). The term grows linearly over `warmup` epochs. The teacher's maps are those
of its hooked stages (post-ReLU on the CIFAR ResNets, where mdistiller takes the pre-ReLU ones). Defaults:
mdistiller's configs/cifar100/reviewkd.yaml (weight 5, resnet32x4 -> resnet8x4) and CFG.REVIEWKD (warm-up
20 epochs, at most 512 middle channels)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.errors import ConfigError
from kd_runner.methods.base import FeatureParams, Method


@dataclass
class Params(FeatureParams):
    method: str = field(default="reviewkd", metadata={"doc": "reviewkd: knowledge review (docs/methods.md)"})
    weight_reviewkd: float = field(default=5.0, metadata={"doc": "weight of the hierarchical context loss"})
    warmup: int = field(
        default=20, metadata={"doc": "epochs over which the ReviewKD term grows linearly to full weight"}
    )
    max_mid_channel: int = field(default=512, metadata={"doc": "at most this many channels inside the ABF modules"})

    def check(self, run) -> None:
        super().check(run)
        if self.warmup < 0:
            raise ConfigError("distill.warmup", self.warmup, "a whole number >= 0 (0: no warm-up)")
        if self.max_mid_channel < 1:
            raise ConfigError("distill.max_mid_channel", self.max_mid_channel, "a whole number >= 1")


class ReviewKD(Method):
    params_type = Params
    parts = ("loss_reviewkd",)
    needs = "stages"

    def trainable(self, student, teacher):
        from torch import nn

        channels = [f.shape[1] for f in student] + [student[-1].shape[1]]  # the stages, then the pooled feature
        out = [f.shape[1] for f in teacher] + [teacher[-1].shape[1]]
        mid = min(self.params.max_mid_channel, channels[-1])
        deepest_first = range(len(channels) - 1, -1, -1)
        self.abfs = nn.ModuleList(_abf(channels[i], mid, out[i], i < len(channels) - 1) for i in deepest_first)
        return self.abfs

    def terms(self, student, teacher, labels, inputs):
        from kd_runner.methods.logits import wide

        p = self.params
        teacher = with_pooled([wide(t.detach()) for t in teacher])
        fused = review(self.abfs, with_pooled([wide(f) for f in student]), [t.shape[-2:] for t in teacher])
        warm = min(self.epoch / p.warmup, 1.0) if p.warmup else 1.0  # mdistiller's warm-up
        return {"loss_reviewkd": p.weight_reviewkd * warm * hcl_loss(fused, teacher)}


def with_pooled(maps):
    """The stage maps and the last one's global average (the pooled feature, as an N x C x 1 x 1 map)."""
    return [*maps, maps[-1].mean(dim=(2, 3), keepdim=True)]


def review(abfs, levels, sizes):
    """The fused maps, shallowest first: each ABF (deepest first) takes its level and the running fusion."""
    fused, residual = [], None
    for abf, x, size in zip(abfs, reversed(levels), reversed(sizes)):
        out, residual = abf_forward(abf, x, residual, tuple(size))
        fused.insert(0, out)
    return fused


def abf_forward(abf, x, residual, size):
    """mdistiller's ABF.forward: the level mixed with the upsampled residual by two attention maps, brought to
    the teacher's `size`; returns (the output map, the new residual)."""
    import torch
    import torch.nn.functional as F

    x = abf["conv1"](x)
    if residual is not None:
        residual = F.interpolate(residual, x.shape[-2:], mode="nearest")
        z = abf["att_conv"](torch.cat([x, residual], dim=1))
        x = x * z[:, :1] + residual * z[:, 1:2]
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size, mode="nearest")
    return abf["conv2"](x), x


def hcl_loss(student, teacher):
    """The paper's HCL (mdistiller's hcl_loss): per level, MSE on the map and on its pools to l x l for l in
    4, 2, 1 smaller than the map, weighted 1, 1/2, 1/4, 1/8 and divided by the weights' sum; summed."""
    import torch
    import torch.nn.functional as F

    losses = []
    for fs, ft in zip(student, teacher):
        loss, weight, total = F.mse_loss(fs, ft), 1.0, 1.0
        for size in (4, 2, 1):
            if size < fs.shape[2]:
                weight /= 2
                pooled = F.mse_loss(F.adaptive_avg_pool2d(fs, size), F.adaptive_avg_pool2d(ft, size))
                loss, total = loss + weight * pooled, total + weight
        losses.append(loss / total)
    return torch.stack(losses).sum()


def _abf(in_channels: int, mid: int, out_channels: int, fuse: bool):
    """mdistiller's ABF modules and initialisation: conv1 (1x1 + BN), att_conv (1x1 to 2 maps + sigmoid, where
    a deeper level exists), conv2 (3x3 + BN)."""
    from torch import nn

    modules = {
        "conv1": nn.Sequential(nn.Conv2d(in_channels, mid, 1, bias=False), nn.BatchNorm2d(mid)),
        "conv2": nn.Sequential(nn.Conv2d(mid, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)),
    }
    if fuse:
        modules["att_conv"] = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid())
    for key in ("conv1", "conv2"):
        nn.init.kaiming_uniform_(modules[key][0].weight, a=1)
    return nn.ModuleDict(modules)
