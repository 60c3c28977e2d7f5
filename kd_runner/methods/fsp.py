"""Flow of solution procedure (Yim et al., CVPR 2017), as RepDistiller's FSP and its two stages. In the init stage
the student's layers learn the teacher's FSP matrices (the Gram matrices between consecutive layers' maps, the
larger map pooled to the smaller), the mean squared difference summed over the pairs; the student stage then
trains without it (RepDistiller: loss_kd = 0 after init), here on Hinton's KD term, so alpha=1 is RepDistiller's
plain cross-entropy. Defaults: RepDistiller (train_student.py --init_epochs 30, init lr 0.05). Both models'
layers must have equal widths: by default their stages (the last module at each spatial size), paired by size."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.errors import UserError
from kd_runner.methods.base import InitParams, Method


@dataclass
class Params(InitParams):
    method: str = field(
        default="fsp", metadata={"doc": "fsp: flow of solution procedure, init stage (docs/methods.md)"}
    )


class FSP(Method):
    params_type = Params
    parts = ("loss_kd",)
    init_needs = "paired_stages"
    init_parts = ("loss_fsp",)

    def init_trainable(self, student, teacher):
        widths = [f.shape[1] for f in student], [f.shape[1] for f in teacher]
        if len(student) < 2 or widths[0] != widths[1]:
            raise UserError(
                f"distill=fsp: needs two or more layers of equal widths in both models, got student {widths[0]} "
                f"and teacher {widths[1]}: name them (distill.student_layers, distill.teacher_layers)"
            )
        return None

    def init_terms(self, student, teacher):
        import torch

        from kd_runner.methods.logits import wide

        pairs = zip(fsp_matrices([wide(f) for f in student]), fsp_matrices([wide(f.detach()) for f in teacher]))
        return {"loss_fsp": torch.stack([((gs - gt) ** 2).mean() for gs, gt in pairs]).sum()}

    def terms(self, student, teacher, labels, inputs):
        from kd_runner.methods.logits import soft_loss

        return {"loss_kd": soft_loss(student, teacher, self.temperature, self.soft_loss)}


def fsp_matrices(maps):
    """G[n, j, i] = mean over positions of top_j * bottom_i for each consecutive pair of maps (N x C_top x C_bot)."""
    from kd_runner.methods.features import match_size

    out = []
    for bottom, top in zip(maps[:-1], maps[1:]):
        bottom, top = match_size(bottom, top)
        out.append(top.flatten(2) @ bottom.flatten(2).transpose(1, 2) / bottom[0, 0].numel())
    return out
