"""SP, PKT, NST, CC and KDSVD against references written here from the papers' equations (float64, fixed
small tensors, explicit loops) in value and gradient, and the identities each paper has."""

import pytest
import torch
from helpers import compose_config

from kd_runner import methods
from kd_runner.errors import UserError
from kd_runner.methods.cc import correlation_loss
from kd_runner.methods.kdsvd import kdsvd_loss
from kd_runner.methods.nst import nst_loss
from kd_runner.methods.pkt import pkt_loss
from kd_runner.methods.sp import similarity_loss
from kd_runner.methods.svd import svd


def randn(*shape, seed, scale=1.0):
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def assert_same_value_and_gradient(ours, reference, student, *rest):
    """`ours` and `reference` on the same inputs: equal values and gradients w.r.t. `student` (to 1e-6)."""
    s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
    value, ref = ours(s1, *rest), reference(s2, *rest)
    assert value.item() == pytest.approx(ref.item(), abs=1e-6)
    (grad,), (ref_grad,) = torch.autograd.grad(value, s1), torch.autograd.grad(ref, s2)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=0)


def reference_sp(fs, ft):
    """Tung & Mori (2019), Eq. 2-4: G = Q Q^T, rows L2-normalised, ||G_t - G_s||_F^2 / b^2."""
    b = len(fs)

    def gram(f):
        q = f.reshape(b, -1)
        g = [[sum(q[i, k] * q[j, k] for k in range(q.shape[1])) for j in range(b)] for i in range(b)]
        return [[g[i][j] / sum(g[i][m] ** 2 for m in range(b)).sqrt() for j in range(b)] for i in range(b)]

    gs, gt = gram(fs), gram(ft)
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / b**2


def test_sp_matches_the_papers_equations_in_value_and_gradient():
    fs, ft = randn(4, 3, 2, 2, seed=0), randn(4, 5, 3, 3, seed=1)  # widths and sizes differ: b x b matrices do not
    assert_same_value_and_gradient(lambda s, t: similarity_loss([s], [t]), reference_sp, fs, ft)


def test_sp_is_zero_on_the_teachers_map_and_blind_to_its_scale_and_a_second_pair_adds():
    ft, fs = randn(4, 3, 2, 2, seed=2), randn(4, 3, 2, 2, seed=3)
    assert similarity_loss([ft.clone()], [ft]).item() == 0
    assert similarity_loss([5.0 * ft], [ft]).item() == pytest.approx(0, abs=1e-15)
    assert similarity_loss([7.0 * fs], [ft]).item() == pytest.approx(similarity_loss([fs], [ft]).item(), rel=1e-12)
    pair = similarity_loss([fs], [ft])
    assert similarity_loss([fs, fs], [ft, ft]).item() == pytest.approx(2 * pair.item(), rel=1e-12)


def reference_pkt(s, t, eps=1e-7):
    """Passalis & Tefas (2018): K = (cos + 1) / 2, p_{j|i} = K_ij / sum_k K_ik, KL(t || s), mean over i, j."""
    b = len(s)

    def probabilities(e):
        unit = [e[i] / (sum(e[i, d] ** 2 for d in range(e.shape[1])).sqrt() + eps) for i in range(b)]
        k = [[(sum(unit[i] * unit[j]) + 1) / 2 for j in range(b)] for i in range(b)]
        return [[k[i][j] / sum(k[i]) for j in range(b)] for i in range(b)]

    ps, pt = probabilities(s), probabilities(t)
    return sum(pt[i][j] * ((pt[i][j] + eps) / (ps[i][j] + eps)).log() for i in range(b) for j in range(b)) / b**2


def test_pkt_matches_the_papers_equations_in_value_and_gradient():
    s, t = randn(5, 3, seed=4), randn(5, 6, seed=5, scale=3.0)  # embeddings of different widths
    assert_same_value_and_gradient(pkt_loss, reference_pkt, s, t)


def test_pkt_is_zero_on_the_teachers_embedding_and_blind_to_each_samples_scale():
    t, s = randn(5, 4, seed=6), randn(5, 4, seed=7)
    assert pkt_loss(t.clone(), t).item() == pytest.approx(0, abs=1e-12)
    rescaled = s * torch.tensor([[1.0], [2.0], [0.5], [3.0], [10.0]], dtype=torch.float64)
    assert pkt_loss(rescaled, t).item() == pytest.approx(pkt_loss(s, t).item(), rel=1e-6)
    assert pkt_loss(s, t).item() > 0


def reference_nst(fs, ft):
    """Huang & Wang (2017), Eq. 6 with k(x, y) = (x^T y)^2 on the L2-normalised channel patterns, per sample
    1/Ct^2 sum k(t, t') + 1/Cs^2 sum k(s, s') - 2/(Cs Ct) sum k(s, t), averaged over the batch."""

    def patterns(f):
        return [[f[n, c].flatten() / f[n, c].flatten().norm() for c in range(f.shape[1])] for n in range(len(f))]

    def mean_kernel(a, b):
        return sum((x @ y) ** 2 for x in a for y in b) / (len(a) * len(b))

    ps, pt = patterns(fs), patterns(ft)
    per_sample = [mean_kernel(t, t) + mean_kernel(s, s) - 2 * mean_kernel(s, t) for s, t in zip(ps, pt)]
    return sum(per_sample) / len(per_sample)


def test_nst_matches_the_papers_mmd_in_value_and_gradient_the_larger_map_pooled():
    fs, ft = randn(2, 3, 4, 4, seed=8), randn(2, 5, 2, 2, seed=9)
    pooled = fs.view(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))  # 2x2 average pooling written out

    def reference(s, t):
        return reference_nst(s.view(2, 3, 2, 2, 2, 2).mean(dim=(3, 5)), t)

    assert_same_value_and_gradient(lambda s, t: nst_loss([s], [t]), reference, fs, ft)
    assert nst_loss([fs], [ft]).item() == pytest.approx(reference_nst(pooled, ft).item(), abs=1e-12)


def test_nst_is_zero_for_the_same_distribution_of_channel_patterns():
    ft = randn(2, 4, 3, 3, seed=10)
    assert nst_loss([ft.clone()], [ft]).item() == pytest.approx(0, abs=1e-12)
    shuffled_scaled_twice = torch.cat([ft[:, [2, 0, 3, 1]], 5.0 * ft], dim=1)  # same patterns, any order and scale
    assert nst_loss([shuffled_scaled_twice], [ft]).item() == pytest.approx(0, abs=1e-12)
    assert nst_loss([randn(2, 4, 3, 3, seed=11)], [ft]).item() > 0


def reference_cc(s, t):
    """RepDistiller's Correlation (the CC authors' code): (1 / (b - 1)) sum_i sum_d |Δ_i,d| |Δ_i+1,d|, Δ = s - t."""
    b, dims = s.shape
    return sum(abs(s[i, d] - t[i, d]) * abs(s[i + 1, d] - t[i + 1, d]) for i in range(b - 1) for d in range(dims)) / (
        b - 1
    )


def test_cc_matches_the_reference_code_in_value_and_gradient_and_is_zero_when_the_heads_agree():
    s, t = randn(5, 4, seed=12), randn(5, 4, seed=13)
    assert_same_value_and_gradient(correlation_loss, reference_cc, s, t)
    assert correlation_loss(t.clone(), t).item() == 0
    assert correlation_loss(t + 1.0, t).item() == pytest.approx(4.0)  # |Δ| = 1 everywhere: 4 dims per pair


def test_cc_trains_a_head_for_each_model_and_nothing_flows_to_the_teachers_features():
    cc = methods.make(methods.params_type("cc")(weight=1.0, embed_dim=3), 4.0, "kl")
    s, t = randn(4, 6, seed=14).requires_grad_(), randn(4, 5, seed=15).requires_grad_()
    head_s, head_t = cc.trainable([s], [t]).double()
    assert (head_s.in_features, head_s.out_features, head_t.in_features, head_t.out_features) == (6, 3, 5, 3)
    loss = cc.terms([s], [t], None, None)["loss_cc"]
    assert loss.item() == pytest.approx(reference_cc(head_s(s), head_t(t)).item(), abs=1e-12)
    loss.backward()
    assert s.grad.abs().sum() > 0 and head_s.weight.grad.abs().sum() > 0 and head_t.weight.grad.abs().sum() > 0
    assert t.grad is None


def reference_kdsvd(student, teacher, k):
    """Lee et al. (2018) as RepDistiller computes it, written per sample with the right singular vectors as the
    eigenvectors of X^T X (X: the HW x C map) and the singular values as the roots of its eigenvalues."""

    def top(f, n):
        x = f.reshape(f.shape[0], -1).T
        values, vectors = torch.linalg.eigh(x.T @ x)
        s = values.flip(0)[:n].clamp(min=0).sqrt()
        return vectors.flip(1)[:, :n], s / s.norm()

    def signed(v):
        return torch.stack([v[:, j] * v[v[:, j].abs().argmax(), j].sign() for j in range(v.shape[1])], 1)

    def aligned(v_s, v_t):
        columns = []
        for j in range(v_t.shape[1]):
            cosines = [v_s[:, i] @ v_t[:, j] for i in range(v_s.shape[1])]
            best = max(range(len(cosines)), key=lambda i: abs(cosines[i].item()))
            columns.append(cosines[best].sign() * v_s[:, best])
        return torch.stack(columns, 1)

    def rbf(a, b):
        return [
            [[(-((a[c, j] - b[d, j]) ** 2) / 8).exp() for j in range(k)] for d in range(len(b))] for c in range(len(a))
        ]

    total = 0
    for n in range(len(student[0])):
        previous = None
        for fs, ft in zip(student, teacher):
            v_t, s_t = top(ft[n], k)
            v_t = signed(v_t) * s_t
            v_s = aligned(top(fs[n], k + 3)[0], signed(top(ft[n], k)[0])) * s_t
            if previous is not None:
                r_s, r_t = rbf(v_s, previous[0]), rbf(v_t, previous[1])
                total = total + sum(
                    (r_s[c][d][j] - r_t[c][d][j]) ** 2
                    for c in range(len(r_s))
                    for d in range(len(r_s[0]))
                    for j in range(k)
                )
            previous = v_s, v_t
    return total / len(student[0])


MAPS = [randn(2, 5, 3, 3, seed=16), randn(2, 4, 3, 3, seed=17)]  # two layers: 5 then 4 channels, 9 positions


@pytest.mark.parametrize("k", [1, 2])
def test_kdsvd_matches_the_reference_in_value_and_gradient(k):
    teacher = [randn(2, 5, 3, 3, seed=18), randn(2, 4, 3, 3, seed=19)]

    def ours(first, second, teacher):
        return kdsvd_loss([first, second], teacher, k)

    def reference(first, second, teacher):
        return reference_kdsvd([first, second], teacher, k)

    assert_same_value_and_gradient(ours, reference, MAPS[0], MAPS[1], teacher)
    second = MAPS[1].clone().requires_grad_()
    (grad,) = torch.autograd.grad(kdsvd_loss([MAPS[0], second], teacher, k), second)
    (ref_grad,) = torch.autograd.grad(reference_kdsvd([MAPS[0], second], teacher, k), second)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=0)


def test_kdsvd_is_zero_on_the_teachers_maps_and_blind_to_scale_and_to_the_order_of_positions():
    teacher = [randn(2, 5, 3, 3, seed=20), randn(2, 4, 3, 3, seed=21)]
    assert kdsvd_loss([f.clone() for f in teacher], teacher, 1).item() == pytest.approx(0, abs=1e-12)
    loss = kdsvd_loss(MAPS, teacher, 1).item()
    assert loss > 0
    moved = [3.0 * MAPS[0].flip(-1), MAPS[1].transpose(-1, -2)]  # the same HW x C rows, reordered and scaled
    assert kdsvd_loss(moved, teacher, 1).item() == pytest.approx(loss, rel=1e-9)


def test_kdsvd_has_a_finite_gradient_on_maps_with_repeated_singular_values():
    """A map equal at all its positions has one nonzero singular value and the others 0, repeated:
    torch.linalg.svd's gradient is NaN there; KDSVD's, as in the original code, is finite."""
    flat = [torch.ones(2, 5, 3, 3, dtype=torch.float64), randn(2, 4, 3, 3, seed=23)]  # s = (3 sqrt 5, 0, 0, 0, 0)
    teacher = [randn(2, 5, 3, 3, seed=24), randn(2, 4, 3, 3, seed=25)]
    first = flat[0].clone().requires_grad_()
    (grad,) = torch.autograd.grad(kdsvd_loss([first, flat[1]], teacher, 1), first)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    x = flat[0].flatten(2).transpose(1, 2).requires_grad_()
    _, _, vh = torch.linalg.svd(x, full_matrices=False)  # torch's own gradient there: not finite
    assert not torch.isfinite(torch.autograd.grad(vh[:, :4].pow(3).sum(), x)[0]).all()


@pytest.mark.parametrize("shape", [(2, 9, 5), (2, 4, 6), (2, 5, 5)])
def test_the_svd_gradient_is_torchs_where_singular_values_are_distinct(shape):
    x = randn(*shape, seed=26)
    weights = [randn(2, shape[1], min(shape[1:]), seed=27), randn(2, min(shape[1:]), seed=28)]
    weights.append(randn(2, min(shape[1:]), shape[2], seed=29))

    def loss(decompose, a):  # invariant to each vector's sign, as KDSVD's loss is
        u, s, vh = decompose(a)
        return (u.pow(2) * weights[0]).sum() + (s * weights[1]).sum() + (vh.pow(2) * weights[2]).sum()

    torch.testing.assert_close(svd(x), tuple(torch.linalg.svd(x, full_matrices=False)))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    (ours,) = torch.autograd.grad(loss(svd, a), a)
    (torchs,) = torch.autograd.grad(loss(lambda t: torch.linalg.svd(t, full_matrices=False), b), b)
    torch.testing.assert_close(ours, torchs)
    assert torch.autograd.gradcheck(lambda t: loss(svd, t), (x.clone().requires_grad_(),))


def test_kdsvd_refuses_one_layer_and_layers_of_different_widths_in_one_line():
    with pytest.raises(UserError, match="two or more layers"):
        compose_config("experiment=smoke", "student=cnn", "distill=kdsvd", "distill.student_layers=[features]")
    kdsvd = methods.make(methods.params_type("kdsvd")(), 4.0, "kl")
    with pytest.raises(UserError, match="layer pair 1 has 4 student and 6 teacher channels") as exc:
        kdsvd.terms(MAPS, [MAPS[0], randn(2, 6, 3, 3, seed=22)], None, None)
    assert "\n" not in str(exc.value)
