"""Feature-based distillation terms, written from their papers' equations: FitNets' hint, attention
transfer and relational KD. Inputs are the student's and the teacher's activations at paired layers;
the teacher's are detached here."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kd_runner.train.logit_losses import wide


def match_size(student: Tensor, teacher: Tensor) -> tuple[Tensor, Tensor]:
    """Two N x C x H x W maps brought to the smaller spatial size by adaptive average pooling."""
    size = min(student.shape[-2], teacher.shape[-2]), min(student.shape[-1], teacher.shape[-1])
    return F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size)


class HintRegressors(nn.Module):
    """FitNets (Romero et al., ICLR 2015): a regressor per layer pair maps the student's map to the
    teacher's channels (a 1x1 convolution + BatchNorm, as in mdistiller's ConvReg); the hint loss is
    the MSE between the regressed student map and the teacher's, summed over the pairs. The regressors
    train with the student."""

    def __init__(self, student_channels: list[int], teacher_channels: list[int]):
        super().__init__()
        self.regressors = nn.ModuleList(
            nn.Sequential(nn.Conv2d(s, t, 1, bias=False), nn.BatchNorm2d(t))
            for s, t in zip(student_channels, teacher_channels)
        )

    def forward(self, student: list[Tensor], teacher: list[Tensor]) -> Tensor:
        losses = []
        for regress, fs, ft in zip(self.regressors, student, teacher):
            fs, ft = match_size(regress(wide(fs)), wide(ft.detach()))
            losses.append(F.mse_loss(fs, ft))
        return torch.stack(losses).sum()


def attention_map(features: Tensor) -> Tensor:
    """The spatial attention map of Zagoruyko & Komodakis (ICLR 2017, Eq. 2 with p = 2): the channel
    mean of |F|^2, flattened and L2-normalised per sample (the mean differs from the sum by a factor the
    normalisation removes)."""
    return F.normalize(wide(features).pow(2).mean(dim=1).flatten(1), dim=1)


def attention_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """Sum over the layer pairs of the mean squared difference of the normalised attention maps (the
    authors' at_loss); the run multiplies it by beta / 2 (the paper's Eq. 3, beta = 1000)."""
    losses = []
    for fs, ft in zip(student, teacher):
        fs, ft = match_size(fs, ft.detach())
        losses.append((attention_map(fs) - attention_map(ft)).pow(2).mean())
    return torch.stack(losses).sum()


def rkd_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD-D (Park et al., CVPR 2019, Eq. 4-5): Huber loss between the pairwise distances of the
    embeddings, each normalised by its mean over the pairs i != j; averaged over all N x N entries as
    in the authors' code."""
    return F.smooth_l1_loss(_normalised_distances(wide(student)), _normalised_distances(wide(teacher.detach())))


def _normalised_distances(e: Tensor) -> Tensor:
    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    squared = (e.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * e @ e.T).clamp(min=1e-12)
    d = squared.sqrt() * off_diagonal
    return d / d[off_diagonal].mean()


def rkd_angle(student: Tensor, teacher: Tensor) -> Tensor:
    """RKD-A (Park et al., CVPR 2019, Eq. 6-7): Huber loss between the cosines of the angles formed by
    every triplet of embeddings, cos(angle at j of i, k) = <e_ij, e_kj> with e_ij = (t_i - t_j) / ||t_i - t_j||."""
    return F.smooth_l1_loss(_angles(wide(student)), _angles(wide(teacher.detach())))


def _angles(e: Tensor) -> Tensor:
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # unit[j, i] = (e_i - e_j) / ||e_i - e_j||
    return torch.bmm(unit, unit.transpose(1, 2)).flatten()
