"""Relational KD (Park et al., CVPR 2019): the student matches the distances (RKD-D) and angles (RKD-A) among
the teacher's penultimate embeddings of a batch. Default weights: the authors' 25 and 50."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.methods.base import FeatureParams, Method


@dataclass
class Params(FeatureParams):
    method: str = field(default="rkd", metadata={"doc": "rkd: relational KD on embeddings (docs/methods.md)"})
    weight_distance: float = field(default=25.0, metadata={"doc": "weight of the distance-wise loss"})
    weight_angle: float = field(default=50.0, metadata={"doc": "weight of the angle-wise loss"})


class RKD(Method):
    params_type = Params
    parts = ("loss_rkd_distance", "loss_rkd_angle")
    needs = "embedding"

    def terms(self, student, teacher, labels, inputs):
        p = self.params
        return {
            "loss_rkd_distance": p.weight_distance * rkd_distance(student[0], teacher[0]),
            "loss_rkd_angle": p.weight_angle * rkd_angle(student[0], teacher[0]),
        }


def rkd_distance(student, teacher):
    """RKD-D (the paper's Eq. 4-5): Huber loss between the pairwise distances of the embeddings, each
    normalised by its mean over the pairs i != j; averaged over all N x N entries as in the authors' code."""
    import torch.nn.functional as F

    from kd_runner.methods.logits import wide

    return F.smooth_l1_loss(_normalised_distances(wide(student)), _normalised_distances(wide(teacher.detach())))


def _normalised_distances(e):
    import torch

    off_diagonal = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    squared = (e.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1) - 2 * e @ e.T).clamp(min=1e-12)
    d = squared.sqrt() * off_diagonal
    return d / d[off_diagonal].mean()


def rkd_angle(student, teacher):
    """RKD-A (the paper's Eq. 6-7): Huber loss between the cosines of the angles formed by every triplet of
    embeddings, cos(angle at j of i, k) = <e_ij, e_kj> with e_ij = (t_i - t_j) / ||t_i - t_j||."""
    import torch.nn.functional as F

    from kd_runner.methods.logits import wide

    return F.smooth_l1_loss(_angles(wide(student)), _angles(wide(teacher.detach())))


def _angles(e):
    import torch
    import torch.nn.functional as F

    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # unit[j, i] = (e_i - e_j) / ||e_i - e_j||
    return torch.bmm(unit, unit.transpose(1, 2)).flatten()
