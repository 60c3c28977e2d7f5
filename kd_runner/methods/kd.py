"""Hinton, Vinyals & Dean, "Distilling the Knowledge in a Neural Network" (2015): the student matches the
teacher's temperature-softened outputs with the top-level `soft_loss` (kl by default, T^2-scaled)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from kd_runner.methods.base import LogitParams, Method
from kd_runner.names import SOFT_LOSSES


@dataclass
class Params(LogitParams):
    method: str = field(default="kd", metadata={"doc": "kd: Hinton's soft targets (docs/methods.md)"})
    soft_losses: ClassVar[tuple[str, ...]] = SOFT_LOSSES


class KD(Method):
    params_type = Params
    parts = ("loss_kd",)

    def terms(self, student, teacher, labels, inputs):
        from kd_runner.methods.logits import soft_loss, standardized

        student, teacher = standardized(self.params.standardize, student, teacher)
        return {"loss_kd": soft_loss(student, teacher, self.temperature, self.soft_loss)}
