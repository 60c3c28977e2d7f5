"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): the student matches the teacher's normalised
spatial attention maps at paired layers. The term is beta * sum over the pairs of the mean squared difference,
as in the authors' code and RepDistiller (`-b 1000`, the CIFAR-100 benchmark's setting), so distill.beta is
the published weight; the paper's Eq. 3 writes beta / 2 with a norm instead of the mean."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.errors import UserError
from kd_runner.methods.base import FeatureParams, Method


@dataclass
class Params(FeatureParams):
    method: str = field(default="at", metadata={"doc": "at: attention transfer (docs/methods.md)"})
    beta: float = field(default=1000.0, metadata={"doc": "weight of the attention term (RepDistiller's -b)"})


class AT(Method):
    params_type = Params
    parts = ("loss_at",)
    needs = "maps"

    def check_feature(self, key, name, feature):
        if feature.shape[-1] * feature.shape[-2] == 1:  # a normalised map of one position is always 1
            raise UserError(
                f"{key}: layer {name!r} outputs a 1 x 1 map {tuple(feature.shape)}; its attention map is constant, "
                "so loss_at would be 0: name a layer whose map has more than one position"
            )

    def terms(self, student, teacher, labels, inputs):
        return {"loss_at": self.params.beta * attention_loss(student, teacher)}


def attention_map(features):
    """The spatial attention map (the paper's Eq. 2 with p = 2): the channel mean of |F|^2, flattened and
    L2-normalised per sample (the mean differs from the sum by a factor the normalisation removes)."""
    import torch.nn.functional as F

    from kd_runner.methods.logits import wide

    return F.normalize(wide(features).pow(2).mean(dim=1).flatten(1), dim=1)


def attention_loss(student, teacher):
    """Sum over the layer pairs of the mean squared difference of the normalised attention maps (the
    authors' at_loss)."""
    import torch

    from kd_runner.methods.features import match_size

    losses = []
    for fs, ft in zip(student, teacher):
        fs, ft = match_size(fs, ft.detach())
        losses.append((attention_map(fs) - attention_map(ft)).pow(2).mean())
    return torch.stack(losses).sum()
