"""DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022): the student matches
the teacher's inter-class (per sample) and intra-class (per class) Pearson relations of the softened
predictions. Defaults: the paper's beta = gamma = 1."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.methods import base
from kd_runner.methods.base import Method


@dataclass
class Params(base.Params):
    method: str = field(default="dist", metadata={"doc": "dist: Pearson relations (docs/methods.md)"})
    beta: float = field(default=1.0, metadata={"doc": "weight of the inter-class relation loss"})
    gamma: float = field(default=1.0, metadata={"doc": "weight of the intra-class relation loss"})


class DIST(Method):
    params_type = Params
    parts = ("loss_inter", "loss_intra")

    def terms(self, student, teacher, labels, inputs):
        inter, intra = dist_terms(student, teacher, self.temperature)
        return {"loss_inter": self.params.beta * inter, "loss_intra": self.params.gamma * intra}


def dist_terms(student, teacher, temperature: float, eps: float = 1e-8):
    """Inter- and intra-class relation losses (the paper's Eq. 5-7), T^2-scaled as in the authors' code:
    1 - mean Pearson correlation of the softened predictions per sample (over the classes), and per class
    (over the batch)."""
    import torch.nn.functional as F

    from kd_runner.methods.logits import wide

    p_s = F.softmax(wide(student) / temperature, dim=-1)
    p_t = F.softmax(wide(teacher.detach()) / temperature, dim=-1)
    scale = temperature * temperature
    inter = 1 - _pearson(p_s, p_t, eps).mean()
    intra = 1 - _pearson(p_s.T, p_t.T, eps).mean()
    return inter * scale, intra * scale


def _pearson(a, b, eps: float):
    """Pearson correlation of each row of `a` with the same row of `b`."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)
