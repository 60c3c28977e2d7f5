"""Ensemble teachers (Hinton, Vinyals & Dean 2015): several teachers, one set of soft targets.

`teacher.ensemble=K` fine-tunes K teachers of the teacher's recipe with seeds teacher.seed, ...,
teacher.seed + K - 1. Each member is an ordinary teacher with its own cache entry (member 0 is the very
teacher a run without an ensemble uses), so each is trained once and shared by every run that needs it.

The soft targets are the mean of the members' temperature-softened probabilities. The ensemble acts as
one teacher whose logits are T * log(mean_k softmax(t_k / T)): softening those at T gives exactly that
mean, so every soft loss works unchanged. The teacher metrics (accuracy, agreement, KL at T=1, per-class
accuracy) see the members combined at T=1, so they do not depend on the run's temperature. With
soft_loss=mse (raw logits, no temperature) the members' logits are averaged.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_runner.config import RunConfig
from kd_runner.data import Dataset
from kd_runner.data.splits import SplitData
from kd_runner.teacher.stage import Teacher, prepare_teacher


def combine_logits(logits: list[Tensor], temperature: float, kind: str) -> Tensor:
    """Logits whose softmax at `temperature` is the mean of the members' softmax at `temperature`."""
    stacked = torch.stack([t.float() for t in logits])
    if kind == "mse":
        return stacked.mean(dim=0)
    log_mean = torch.logsumexp(F.log_softmax(stacked / temperature, dim=-1), dim=0) - math.log(len(logits))
    return temperature * log_mean


class TeacherEnsemble(nn.Module):
    """Several teachers behaving as one: forward returns `combine_logits` of the members' outputs."""

    def __init__(self, members: list[nn.Module], temperature: float, kind: str):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.temperature, self.kind = temperature, kind

    def forward(self, x: Tensor) -> Tensor:
        return combine_logits([m(x) for m in self.members], self.temperature, self.kind)


def prepare_teachers(
    cfg: RunConfig, data: Dataset, device_data: SplitData, progress: bool, stop=None, on_epoch=None, shared=None
) -> Teacher:
    """The run's teacher: one `prepare_teacher`, or an ensemble of `teacher.ensemble` of them.

    An ensemble's history holds every member's rows, their stage named teacher_0, teacher_1, ...; its
    source and key list the members' in order, and its key says how they are combined (its logits
    depend on the temperature and the soft loss). `on_epoch(rows)` follows each fine-tuning epoch; `shared`:
    the sweep's teachers kept in memory (see `prepare_teacher`).
    """
    if cfg.teacher.ensemble == 1:
        return prepare_teacher(cfg, data, device_data, progress, stop, on_epoch, shared)
    members = []
    for i in range(cfg.teacher.ensemble):
        recipe = dataclasses.replace(cfg.teacher, seed=cfg.teacher.seed + i, ensemble=1)
        member = dataclasses.replace(cfg, teacher=recipe)
        members.append(prepare_teacher(member, data, device_data, progress, stop, on_epoch, shared))
    models = [m.model for m in members]
    return Teacher(
        model=TeacherEnsemble(models, cfg.temperature, cfg.soft_loss).eval(),
        source=",".join(m.source for m in members),
        history=[{**row, "stage": f"teacher_{i}"} for i, m in enumerate(members) for row in m.history],
        key=",".join(m.key for m in members) + f";{cfg.soft_loss}@T={cfg.temperature}",
        seconds=sum(m.seconds for m in members),
        metrics_model=TeacherEnsemble(models, 1.0, cfg.soft_loss).eval(),
    )
