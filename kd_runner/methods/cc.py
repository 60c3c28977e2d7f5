"""Correlation congruence (Peng et al., ICCV 2019) as RepDistiller trains it (distiller_zoo/CC.py, the
authors' code): both models' penultimate embeddings go through a linear head each (RepDistiller's
LinearEmbed, trained with the student; the teacher's features stay detached), and the loss couples the
embedding differences of consecutive samples of the batch, mean_i sum_d |s_i - t_i|_d |s_{i+1} - t_{i+1}|_d.
Defaults: RepDistiller's `-b 0.02` for `--distill correlation` (scripts/run_cifar_distill.sh) and
`--feat_dim 128` (train_student.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.errors import ConfigError
from kd_runner.methods.base import FeatureParams, Method


@dataclass
class Params(FeatureParams):
    method: str = field(default="cc", metadata={"doc": "cc: correlation congruence on embeddings (docs/methods.md)"})
    weight: float = field(default=0.02, metadata={"doc": "weight of the correlation term (RepDistiller's -b)"})
    embed_dim: int = field(default=128, metadata={"doc": "width of both linear heads (RepDistiller's --feat_dim)"})

    def check(self, run) -> None:
        super().check(run)
        if self.embed_dim < 1:
            raise ConfigError("distill.embed_dim", self.embed_dim, "a whole number >= 1")


class CC(Method):
    params_type = Params
    parts = ("loss_cc",)
    needs = "embedding"

    def trainable(self, student, teacher):
        from torch import nn

        dim = self.params.embed_dim
        self.heads = nn.ModuleList([nn.Linear(student[0].shape[1], dim), nn.Linear(teacher[0].shape[1], dim)])
        return self.heads

    def terms(self, student, teacher, labels, inputs):
        from kd_runner.methods.logits import wide

        head_s, head_t = self.heads
        e_s, e_t = head_s(wide(student[0])), head_t(wide(teacher[0].detach()))
        return {"loss_cc": self.params.weight * correlation_loss(e_s, e_t)}


def correlation_loss(student, teacher):
    """mean over i < b - 1 of sum_d |s_i - t_i|_d * |s_{i+1} - t_{i+1}|_d (RepDistiller's Correlation):
    zero when the two heads agree on every sample."""
    delta = (student - teacher).abs()
    return (delta[:-1] * delta[1:]).sum(1).mean()
