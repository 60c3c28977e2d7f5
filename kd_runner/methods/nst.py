"""Neuron selectivity transfer (Huang & Wang, 2017): each channel's spatial activation pattern, L2-normalised,
is a sample of the layer's distribution of neuron selectivities; the student matches the teacher's
distribution by the squared MMD with the polynomial kernel k(x, y) = (x^T y)^2 (d = 2, c = 0; the paper's
Eq. 6 and its best kernel on CIFAR), at paired layers. Default weight: RepDistiller's `-b 50` for
`--distill nst` (scripts/run_cifar_distill.sh; mdistiller's CFG.NST.LOSS.FEAT_WEIGHT is the same)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.methods.base import FeatureParams, Method


@dataclass
class Params(FeatureParams):
    method: str = field(default="nst", metadata={"doc": "nst: neuron selectivity transfer on maps (docs/methods.md)"})
    weight: float = field(default=50.0, metadata={"doc": "weight of the MMD term (the paper's lambda / 2)"})


class NST(Method):
    params_type = Params
    parts = ("loss_nst",)
    needs = "maps"

    def terms(self, student, teacher, labels, inputs):
        return {"loss_nst": self.params.weight * nst_loss(student, teacher)}


def selectivities(features):
    """N x C x HW: each channel's spatial pattern L2-normalised (the kernel then compares shapes, not scales)."""
    import torch.nn.functional as F

    from kd_runner.methods.logits import wide

    return F.normalize(wide(features).flatten(2), dim=2)


def poly_kernel_mean(a, b):
    """The mean over the batch and the channel pairs of (a_i^T b_j)^2."""
    return (a @ b.transpose(1, 2)).pow(2).mean()


def nst_loss(student, teacher):
    """Sum over the layer pairs of MMD^2 = E k(t, t') + E k(s, s') - 2 E k(s, t), the larger map pooled to
    the smaller; the teacher-only term is a constant (zero loss when the distributions agree)."""
    import torch

    from kd_runner.methods.features import match_size

    losses = []
    for fs, ft in zip(student, teacher):
        fs, ft = match_size(fs, ft.detach())
        s, t = selectivities(fs), selectivities(ft)
        losses.append(poly_kernel_mean(t, t) + poly_kernel_mean(s, s) - 2 * poly_kernel_mean(s, t))
    return torch.stack(losses).sum()
