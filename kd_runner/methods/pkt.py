"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): the student matches the teacher's
conditional probabilities of picking sample j as a neighbour of sample i, from a cosine-similarity kernel on
the penultimate embeddings, by KL divergence (the paper's Eq. 10-13 with its cosine kernel, as the authors'
code computes them: the kernel sums run over all j, the KL is a mean over the b x b entries). Default
weight: RepDistiller's `-b 30000` for `--distill pkt` (scripts/run_cifar_distill.sh; mdistiller's
CFG.PKT.LOSS.FEAT_WEIGHT is the same)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.methods.base import FeatureParams, Method

EPS = 1e-7  # the authors' eps, in the norms and inside the log


@dataclass
class Params(FeatureParams):
    method: str = field(default="pkt", metadata={"doc": "pkt: probabilistic KT on embeddings (docs/methods.md)"})
    weight: float = field(default=30000.0, metadata={"doc": "weight of the KL term (RepDistiller's -b)"})


class PKT(Method):
    params_type = Params
    parts = ("loss_pkt",)
    needs = "embedding"

    def terms(self, student, teacher, labels, inputs):
        return {"loss_pkt": self.params.weight * pkt_loss(student[0], teacher[0])}


def neighbour_probabilities(embedding):
    """p_{j|i} = K(i, j) / sum_k K(i, k) with K = (cos + 1) / 2, a kernel in [0, 1]: the rows are
    distributions over the batch whatever the embedding's scale."""
    from kd_runner.methods.logits import wide

    e = wide(embedding)
    e = e / (e.norm(dim=1, keepdim=True) + EPS)
    kernel = (e @ e.T + 1) / 2
    return kernel / kernel.sum(dim=1, keepdim=True)


def pkt_loss(student, teacher):
    """KL(teacher || student) of the neighbour probabilities, averaged over the b x b entries."""
    import torch

    p_t, p_s = neighbour_probabilities(teacher.detach()), neighbour_probabilities(student)
    return torch.mean(p_t * torch.log((p_t + EPS) / (p_s + EPS)))
