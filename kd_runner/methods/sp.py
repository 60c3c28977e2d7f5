"""Similarity-preserving KD (Tung & Mori, ICCV 2019): the student matches the teacher's batch similarity
matrix, the Gram matrix of the flattened maps with L2-normalised rows, at paired layers (the paper's
Eq. 2-4). Default weight: RepDistiller's `-b 3000` for `--distill similarity` (scripts/run_cifar_distill.sh;
mdistiller's CFG.SP.LOSS.FEAT_WEIGHT is the same); RepDistiller reads the last stage's map, our default layer."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.methods.base import FeatureParams, Method


@dataclass
class Params(FeatureParams):
    method: str = field(default="sp", metadata={"doc": "sp: similarity-preserving KD on maps (docs/methods.md)"})
    weight: float = field(default=3000.0, metadata={"doc": "the paper's gamma (RepDistiller's -b)"})


class SP(Method):
    params_type = Params
    parts = ("loss_sp",)
    needs = "maps"

    def terms(self, student, teacher, labels, inputs):
        return {"loss_sp": self.params.weight * similarity_loss(student, teacher)}


def similarity_matrix(features):
    """G = Q Q^T of the flattened maps Q (b x chw), each row L2-normalised (the paper's Eq. 2-3): the batch
    similarity is then independent of the layer's width and scale."""
    import torch.nn.functional as F

    from kd_runner.methods.logits import wide

    q = wide(features).flatten(1)
    return F.normalize(q @ q.T, dim=1)


def similarity_loss(student, teacher):
    """Sum over the layer pairs of ||G_t - G_s||_F^2 / b^2 (the paper's Eq. 4): the maps may differ in
    channels and size, the b x b matrices do not."""
    import torch

    losses = []
    for fs, ft in zip(student, teacher):
        diff = similarity_matrix(ft.detach()) - similarity_matrix(fs)
        losses.append(diff.pow(2).sum() / len(fs) ** 2)
    return torch.stack(losses).sum()
