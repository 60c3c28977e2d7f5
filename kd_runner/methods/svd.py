"""A singular value decomposition whose gradient stays finite where singular values repeat (KDSVD's maps).

torch.linalg.svd's gradient divides by s_i^2 - s_j^2 and by s_i: where two singular values are equal (a
rank-deficient map: several zeros) the quotient is 0/0 and the gradient NaN. The vectors of a repeated
value are defined only up to a rotation within their subspace, so the gradient has no component along
that rotation: as KDSVD's original code does (Lee et al., SSKD_SVD's gradient_svd, which removes the
non-finite entries of 1/(s_i^2 - s_j^2)), those quotients are taken as 0 here. Elsewhere it is torch's own
gradient (svd_backward in FunctionsManual.cpp), term for term.
"""

from __future__ import annotations

import torch
from torch import Tensor


def svd(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """U, S, Vh of the thin SVD of real `x` (... x m x n), as torch.linalg.svd(x, full_matrices=False)."""
    return _StableSVD.apply(x)


def safe_reciprocal(x: Tensor, tol: Tensor) -> Tensor:
    """1 / x where |x| > tol, else 0 (a repeated or zero singular value: no gradient along it)."""
    small = x.abs() <= tol
    return torch.where(small, torch.zeros_like(x), 1 / torch.where(small, torch.ones_like(x), x))


class _StableSVD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor):
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        ctx.save_for_backward(u, s, vh)
        return u, s, vh

    @staticmethod
    def backward(ctx, gu: Tensor | None, gs: Tensor | None, gvh: Tensor | None) -> Tensor:
        u, s, vh = ctx.saved_tensors
        m, n, k = u.shape[-2], vh.shape[-1], s.shape[-1]
        if gu is None and gvh is None:
            return u @ (gs.unsqueeze(-1) * vh)
        s2, s_max = s * s, s.amax(-1, keepdim=True)
        tol = torch.finfo(s.dtype).eps * max(m, n) * s_max  # equal, or zero, within the rank tolerance
        inv_e = safe_reciprocal(s2.unsqueeze(-2) - s2.unsqueeze(-1), (tol * s_max).unsqueeze(-1))  # 1/(s_j^2-s_i^2)
        inv_s = safe_reciprocal(s, tol)
        ga = torch.zeros_like(s2.unsqueeze(-1) * s2.unsqueeze(-2))
        if gu is not None:
            uhgu = u.mT @ gu
            ga = ga + (uhgu - uhgu.mT) * inv_e * s.unsqueeze(-2)
        if gvh is not None:
            vhgv = vh @ gvh.mT
            ga = ga + s.unsqueeze(-1) * ((vhgv - vhgv.mT) * inv_e)
        if gs is not None:
            ga = ga + torch.diag_embed(gs)
        if m > k and gu is not None:
            gu_sinv = gu * inv_s.unsqueeze(-2)
            return (u @ ga + gu_sinv - u @ (u.mT @ gu_sinv)) @ vh
        if n > k and gvh is not None:
            sinv_gvh = gvh * inv_s.unsqueeze(-1)
            return u @ (ga @ vh + sinv_gvh - (sinv_gvh @ vh.mT) @ vh)
        return u @ ga @ vh
