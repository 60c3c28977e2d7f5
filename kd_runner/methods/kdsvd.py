"""KDSVD (Lee et al., ECCV 2018) as RepDistiller computes it (distiller_zoo/KDSVD.py): each map, read as
HW x C, is compressed to its top right singular vectors (over channels), scaled by the teacher's
normalised singular values; the student's top k + 3 vectors are matched to the teacher's k by the largest
|cosine| (sign included), and the student matches the teacher's RBF, exp(-(v_i - v'_j)^2 / 8) taken entry
by entry between the vectors of consecutive layers. It needs two or more layer pairs of equal widths
(RepDistiller: the three stages of same-width pairs such as resnet32x4 -> resnet8x4): by default both
models' stages (the last module at each spatial size), paired by size.

One change: a singular vector's sign is arbitrary (the SVD backend picks it) and the target depends on it,
so each teacher vector is signed here to make its largest-magnitude entry positive; the loss is then one
function of the maps, equal to RepDistiller's for that choice. Defaults: k = 1 (RepDistiller's KDSVD(k=1),
mdistiller's CFG.KDSVD.K) and weight 1 (mdistiller's CFG.KDSVD.LOSS.FEAT_WEIGHT; RepDistiller's script
gives no -b for kdsvd)."""

from __future__ import annotations

from dataclasses import dataclass, field

from kd_runner.errors import ConfigError, UserError
from kd_runner.methods.base import FeatureParams, Method

RBF_SCALE = 8.0  # the reference code's fixed RBF width


@dataclass
class Params(FeatureParams):
    method: str = field(default="kdsvd", metadata={"doc": "kdsvd: SVD of maps, RBF between layers (docs/methods.md)"})
    weight: float = field(default=1.0, metadata={"doc": "weight of the RBF matching term"})
    k: int = field(default=1, metadata={"doc": "the teacher's singular vectors per layer (the student's: k + 3)"})

    def check(self, run) -> None:
        super().check(run)
        if self.k < 1:
            raise ConfigError("distill.k", self.k, "a whole number >= 1")
        if len(self.student_layers) == 1:
            raise ConfigError(
                "distill.student_layers",
                self.student_layers,
                "two or more layers (and as many distill.teacher_layers of the same widths) with distill=kdsvd: "
                "its term relates consecutive layers; or none: both models' stages of equal widths, paired by size",
            )


class KDSVD(Method):
    params_type = Params
    parts = ("loss_kdsvd",)
    needs = "paired_stages"

    def terms(self, student, teacher, labels, inputs):
        check_widths(student, teacher)
        return {"loss_kdsvd": self.params.weight * kdsvd_loss(student, teacher, self.params.k)}


def check_widths(student, teacher) -> None:
    """One line if a layer pair differs in channels: KDSVD compares singular vectors over the channels."""
    for i, (fs, ft) in enumerate(zip(student, teacher)):
        if fs.shape[1] != ft.shape[1]:
            raise UserError(
                f"distill=kdsvd: layer pair {i} has {fs.shape[1]} student and {ft.shape[1]} teacher channels; "
                "it compares singular vectors over channels: pair layers of equal widths"
            )


def singular_vectors(features, n):
    """The top n right singular vectors (N x C x n) of each sample's HW x C map and the top n singular
    values, L2-normalised over the n (N x n). The SVD's gradient is finite where singular values repeat
    (a rank-deficient map), as in the original code (methods/svd.py)."""
    import torch.nn.functional as F

    from kd_runner.methods.logits import wide
    from kd_runner.methods.svd import svd

    _, s, vh = svd(wide(features).flatten(2).transpose(1, 2))
    return F.normalize(vh.transpose(1, 2)[:, :, :n], dim=1), F.normalize(s[:, :n], dim=1)


def signed(v):
    """v with each column's largest-magnitude entry made positive (a fixed choice of the arbitrary sign)."""
    peak = v.gather(1, v.abs().argmax(dim=1, keepdim=True))
    return v * peak.sign()


def aligned(v_s, v_t):
    """For each teacher vector, the student vector of largest |cosine| with it, times the cosine's sign."""
    import torch

    cosine = v_s.transpose(1, 2) @ v_t  # N x (k + 3) x k
    best = cosine.abs() == cosine.abs().amax(dim=1, keepdim=True)
    return v_s @ torch.where(best, cosine.sign(), torch.zeros_like(cosine))


def kdsvd_loss(student, teacher, k):
    """Sum over consecutive layer pairs of the squared difference of the student's and the teacher's
    RBF between the layers' scaled singular vectors, divided by the batch size."""
    import torch

    losses, previous = [], None
    for fs, ft in zip(student, teacher):
        v_t, s_t = singular_vectors(ft.detach(), k)
        v_t = signed(v_t)
        v_s = aligned(singular_vectors(fs, k + 3)[0], v_t)
        current = v_s * s_t.unsqueeze(1), v_t * s_t.unsqueeze(1)
        if previous is not None:
            rbf_s, rbf_t = (
                torch.exp(-(a.unsqueeze(2) - b.unsqueeze(1)).pow(2) / RBF_SCALE) for a, b in zip(current, previous)
            )
            losses.append((rbf_s - rbf_t).pow(2).sum() / len(fs))
        previous = current
    return torch.stack(losses).sum()
