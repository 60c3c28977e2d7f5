"""Contrastive representation distillation (Tian et al., ICLR 2020), as RepDistiller's CRDLoss: both models'
penultimate embeddings go through a linear head and an L2 normalisation; each embedding is contrasted
against a memory bank of the other model's (one row per training sample, momentum-updated): its own sample's
row is the positive, K rows of samples of other classes the negatives (RepDistiller's "exact" mode), scored
by the NCE loss of the paper's Eq. 18 in both directions. Defaults: RepDistiller's CIFAR-100 settings
(train_student.py: feat_dim 128, nce_k 16384, nce_t 0.07, nce_m 0.5; scripts/run_cifar_distill.sh: -b 0.8)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.errors import ConfigError
from kd_runner.methods.base import FeatureParams, Method


@dataclass
class Params(FeatureParams):
    method: str = field(default="crd", metadata={"doc": "crd: contrastive distillation (docs/methods.md)"})
    weight_crd: float = field(default=0.8, metadata={"doc": "weight of the contrastive (NCE) loss"})
    feat_dim: int = field(default=128, metadata={"doc": "dimension of the embedding heads and the memory banks"})
    nce_k: int = field(default=16384, metadata={"doc": "negatives per sample (capped at the training set size)"})
    nce_t: float = field(default=0.07, metadata={"doc": "temperature of the contrastive scores"})
    nce_m: float = field(default=0.5, metadata={"doc": "momentum of the memory bank update"})

    def check(self, run) -> None:
        super().check(run)
        for key, value in (("feat_dim", self.feat_dim), ("nce_k", self.nce_k)):
            if value < 1:
                raise ConfigError(f"distill.{key}", value, "a whole number >= 1")
        if self.nce_t <= 0:
            raise ConfigError("distill.nce_t", self.nce_t, "a number > 0")
        if self.nce_m > 1:
            raise ConfigError("distill.nce_m", self.nce_m, "a number from 0 to 1")
        if not run.transfer.labeled:
            raise ConfigError("distill.method", "crd", "not crd with transfer.labeled=false (negatives by class)")


class CRD(Method):
    params_type = Params
    parts = ("loss_crd",)
    needs = "embedding"

    def trainable(self, student, teacher):
        self.state = _state(student[0].shape[1], teacher[0].shape[1], self.params, self.train_labels)
        return self.state

    def batch_terms(self, student, teacher, labels, inputs, idx):
        """Training: the positives and negatives come from the banks, which then take this batch's embeddings."""
        import torch

        with torch.autocast(student[0].device.type, enabled=False):  # exp(1/0.07) overflows half precision
            v_s, v_t = self.state.embed(student[0], teacher[0])
            rows = torch.cat([idx[:, None], self.state.negatives(idx)], 1)
            scores = self.state.scores(v_s, v_t, self.state.memory_t[rows], self.state.memory_s[rows])
            z = self.state.normalisers(scores, keep=True)
            loss = sum(nce_loss(s / zi, len(self.state.memory_s)) for s, zi in zip(scores, z))
            self.state.update(idx, v_s, v_t)
        return {"loss_crd": self.params.weight_crd * loss}

    def terms(self, student, teacher, labels, inputs):
        """Validation (no bank there): the positive is the other model's embedding of the same sample, the
        negatives a fixed draw from the banks; nothing of the state changes."""
        import torch

        with torch.autocast(student[0].device.type, enabled=False):
            v_s, v_t = self.state.embed(student[0], teacher[0])
            fixed = torch.Generator().manual_seed(0)
            neg = torch.randint(len(self.state.memory_s), (len(v_s), self.state.k), generator=fixed).to(v_s.device)
            rows_t = torch.cat([v_t.detach()[:, None], self.state.memory_t[neg]], 1)
            rows_s = torch.cat([v_s.detach()[:, None], self.state.memory_s[neg]], 1)
            scores = self.state.scores(v_s, v_t, rows_t, rows_s)
            z = self.state.normalisers(scores, keep=False)
            loss = sum(nce_loss(s / zi, len(self.state.memory_s)) for s, zi in zip(scores, z))
        return {"loss_crd": self.params.weight_crd * loss}


def nce_loss(p, n_data: int):
    """The paper's Eq. 18 (RepDistiller's ContrastLoss): p (B x (1+K)) holds exp(score / T) / Z of the positive
    (column 0) and the K negatives; with noise Pn = 1/N, h = p / (p + K Pn) is the probability that a pair is
    real, and the loss is -(1/B) [sum log h(positive) + sum log(1 - h(negative))]."""
    import torch

    noise = (p.shape[1] - 1) / n_data
    positive = torch.log(p[:, 0] / (p[:, 0] + noise))
    negative = torch.log(noise / (p[:, 1:] + noise))
    return -(positive.sum() + negative.sum()) / len(p)


def _state(student_dim: int, teacher_dim: int, params: Params, train_labels):
    """The heads, the banks, the normalisers and the negatives' generator: one module, so the student's
    checkpoint holds all of it and a resume is exact."""
    import math

    import torch
    from torch import nn

    class ContrastState(nn.Module):
        def __init__(self):
            super().__init__()
            n, d = len(train_labels), params.feat_dim
            self.k, self.t, self.m = min(params.nce_k, n), params.nce_t, params.nce_m
            self.embed_s, self.embed_t = nn.Linear(student_dim, d), nn.Linear(teacher_dim, d)
            bound = 1 / math.sqrt(d / 3)  # RepDistiller's ContrastMemory initialisation
            self.register_buffer("memory_s", torch.rand(n, d).mul_(2 * bound).sub_(bound))
            self.register_buffer("memory_t", torch.rand(n, d).mul_(2 * bound).sub_(bound))
            self.register_buffer("z", torch.full((2,), -1.0))  # set on the first training batch
            seed = int(torch.randint(2**62, ()).item())  # from the run's seeded global generator
            self.register_buffer("rng", torch.Generator().manual_seed(seed).get_state())
            self.labels = train_labels.detach().cpu()  # not state: the training split's labels
            self.has_others = torch.bincount(self.labels, minlength=int(self.labels.max()) + 1) < n

        def embed(self, fs, ft):
            import torch.nn.functional as F

            from kd_runner.methods.logits import wide

            return F.normalize(self.embed_s(wide(fs)), dim=1), F.normalize(self.embed_t(wide(ft.detach())), dim=1)

        def scores(self, v_s, v_t, rows_t, rows_s):
            """exp(<row, anchor> / T): the student's embedding against teacher rows, the teacher's against student's."""
            pairs = ((v_s, rows_t), (v_t, rows_s))
            return [torch.exp(torch.bmm(rows.detach(), v[:, :, None])[:, :, 0] / self.t) for v, rows in pairs]

        def normalisers(self, scores, keep: bool):
            """RepDistiller's Z: the mean score times N, fixed on the first training batch."""
            z = [zi if zi > 0 else s.detach().mean() * len(self.memory_s) for zi, s in zip(self.z, scores)]
            if keep and self.z[0] < 0:
                self.z.copy_(torch.stack(z))
            return z

        def negatives(self, idx):
            """K samples of other classes per anchor, uniform with replacement, from the kept generator."""
            g = torch.Generator()
            g.set_state(self.rng.cpu())
            anchors = self.labels[idx.cpu()][:, None]
            neg = torch.randint(len(self.labels), (len(idx), self.k), generator=g)
            clash = (self.labels[neg] == anchors) & self.has_others[anchors]
            while clash.any():
                neg[clash] = torch.randint(len(self.labels), (int(clash.sum()),), generator=g)
                clash = (self.labels[neg] == anchors) & self.has_others[anchors]
            self.rng.copy_(g.get_state())
            return neg.to(idx.device)

        @torch.no_grad()
        def update(self, idx, v_s, v_t):
            import torch.nn.functional as F

            for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                bank[idx] = F.normalize(bank[idx] * self.m + v.detach() * (1 - self.m), dim=1)

    return ContrastState()
