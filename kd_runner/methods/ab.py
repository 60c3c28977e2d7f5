"""Activation boundaries (Heo et al., AAAI 2019), as RepDistiller's ABLoss and its two stages. In the init stage a
connector per stage (RepDistiller's ConvReg without ReLU; none where the shapes agree) and the student's layers
below learn where the teacher's neurons activate, by the margin loss; the student stage then trains without the
AB term (RepDistiller: loss_kd = 0 after init), here on Hinton's KD term, so alpha=1 is RepDistiller's plain
cross-entropy. Defaults: RepDistiller (ABLoss margin 1.0; train_student.py --init_epochs 30, init lr 0.05)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.errors import UserError
from kd_runner.methods.base import InitParams, Method


@dataclass
class Params(InitParams):
    method: str = field(default="ab", metadata={"doc": "ab: activation boundaries, init stage (docs/methods.md)"})
    margin: float = field(
        default=1.0, metadata={"doc": "AB margin: the connector's outputs are pushed beyond +-margin"}
    )


class AB(Method):
    params_type = Params
    parts = ("loss_kd",)
    init_needs = "stages"
    init_parts = ("loss_ab",)

    def init_trainable(self, student, teacher):
        from torch import nn

        self.connectors = nn.ModuleList(_connector(s.shape, t.shape) for s, t in zip(student, teacher))
        return self.connectors

    def init_terms(self, student, teacher):
        import torch

        from kd_runner.methods.logits import wide

        n = len(student)
        losses = [
            2.0 ** (i - n + 1) * boundary_loss(connect(wide(fs)), wide(ft.detach()), self.params.margin)
            for i, (connect, fs, ft) in enumerate(zip(self.connectors, student, teacher))
        ]
        return {"loss_ab": torch.stack(losses).sum() / len(student[0]) * 3 / 1000}  # RepDistiller's scale

    def terms(self, student, teacher, labels, inputs):
        from kd_runner.methods.logits import soft_loss

        return {"loss_kd": soft_loss(student, teacher, self.temperature, self.soft_loss)}


def boundary_loss(source, target, margin: float):
    """The paper's alternative L2 loss summed over all neurons: a student response on the wrong side of the
    teacher's activation boundary (teacher > 0 or not) is pulled beyond the margin on the right side."""
    on = (target > 0).to(source.dtype)
    off = 1 - on
    wrong_off = off * (source > -margin).to(source.dtype)
    wrong_on = on * (source <= margin).to(source.dtype)
    return ((source + margin) ** 2 * wrong_off + (source - margin) ** 2 * wrong_on).sum()


def _connector(s_shape, t_shape):
    """RepDistiller's ConvReg (no ReLU) from the student's map to the teacher's shape; none when they agree."""
    from torch import nn

    (sc, sh, sw), (tc, th, tw) = tuple(s_shape[1:]), tuple(t_shape[1:])
    if sc == tc and sh == th:
        return nn.Identity()
    if sh == 2 * th:
        conv = nn.Conv2d(sc, tc, 3, stride=2, padding=1)
    elif sh * 2 == th:
        conv = nn.ConvTranspose2d(sc, tc, 4, stride=2, padding=1)
    elif sh >= th and sw >= tw:
        conv = nn.Conv2d(sc, tc, (1 + sh - th, 1 + sw - tw))
    else:
        raise UserError(f"distill=ab: no connector from a student map of size {sh}x{sw} to the teacher's {th}x{tw}")
    return nn.Sequential(conv, nn.BatchNorm2d(tc))
