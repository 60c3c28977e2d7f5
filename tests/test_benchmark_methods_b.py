"""VID, CRD, OFD and ReviewKD against references written here from the papers' equations (float64, small fixed
tensors, explicit loops where the equation is a sum), in value and gradient; the papers' identities; and what
the trained state must keep (CRD's bank, its draws) so that a resume is exact."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from kd_runner import methods
from kd_runner.methods.crd import nce_loss


def make(name: str, **params):
    return methods.make(methods.params_type(name)(**params), 4.0, "kl")


def grads(loss, *tensors):
    return torch.autograd.grad(loss, tensors)


def assert_same(ours, ref, inputs, ref_inputs):
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
    for g, rg in zip(grads(ours, *inputs), grads(ref, *ref_inputs)):
        torch.testing.assert_close(g, rg, atol=1e-6, rtol=0)


# VID


def test_vid_is_the_gaussian_negative_log_likelihood_of_the_teachers_map_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    vid = make("vid")
    student = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 5, 2, 2, generator=g, dtype=torch.float64)
    module = vid.trainable([student], [teacher]).double()
    with torch.no_grad():
        module["log_scales"][0].copy_(torch.randn(5, generator=g, dtype=torch.float64))
    ours = vid.terms([student], [teacher], None, None)["loss_vid"]

    scale = module["log_scales"][0]
    ref_student, ref_scale = student.detach().clone().requires_grad_(), scale.detach().clone().requires_grad_()
    mean = module["regressors"][0](F.avg_pool2d(ref_student, 2))  # the larger map pooled to the smaller
    var = torch.log(1 + torch.exp(ref_scale)) + 1e-5
    normal = torch.distributions.Normal(mean, var.sqrt().view(1, 5, 1, 1))
    ref = (-normal.log_prob(teacher) - 0.5 * math.log(2 * math.pi)).mean()
    assert_same(ours, ref, (student, scale), (ref_student, ref_scale))


def test_vid_starts_at_the_initial_variance_and_its_term_is_half_the_log_variance_at_a_perfect_mean():
    vid = make("vid", init_pred_var=3.0)
    fs, ft = torch.randn(2, 3, 2, 2), torch.randn(2, 4, 2, 2)
    module = vid.trainable([fs], [ft])
    var = F.softplus(module["log_scales"][0]) + 1e-5
    torch.testing.assert_close(var, torch.full((4,), 3.0))
    with torch.no_grad():
        mean = module["regressors"][0](fs)
    from kd_runner.methods.vid import vid_nll

    assert vid_nll(mean, module["log_scales"][0], mean, 1e-5).item() == pytest.approx(0.5 * math.log(3.0), rel=1e-6)


def test_vid_regressors_are_teacher_wide_and_train_and_the_teacher_is_detached():
    vid = make("vid")
    student, teacher = torch.randn(2, 3, 4, 4, requires_grad=True), torch.randn(2, 6, 4, 4, requires_grad=True)
    module = vid.trainable([student, student], [teacher, teacher])
    assert [c.out_channels for c in module["regressors"][0] if isinstance(c, torch.nn.Conv2d)] == [6, 6, 6]
    loss = vid.terms([student, student], [teacher, teacher], None, None)["loss_vid"]
    loss.backward()
    assert teacher.grad is None and module["log_scales"][1].grad.abs().sum() > 0


# CRD


def reference_nce(anchor, rows, z, n_data, t):
    """Tian et al. (2020), Eq. 18 with their normalised score: h(a, r) = e / (e + K N_noise), e = exp(<a, r> / T) / Z,
    noise 1 / N; minus the mean over the batch of log h(positive) + sum of log(1 - h(negative))."""
    k = rows.shape[1] - 1
    total = 0
    for i in range(len(anchor)):
        for j in range(k + 1):
            e = torch.exp(anchor[i] @ rows[i, j] / t) / z
            h = e / (e + k / n_data)
            total = total + (torch.log(h) if j == 0 else torch.log(1 - h))
    return -total / len(anchor)


def test_nce_loss_matches_the_papers_equation_in_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    anchor = F.normalize(torch.randn(3, 4, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    rows = F.normalize(torch.randn(3, 6, 4, generator=g, dtype=torch.float64), dim=2)
    z, n = 7.5, 40
    ours = nce_loss(torch.exp(torch.bmm(rows, anchor[:, :, None])[:, :, 0] / 0.07) / z, n)
    ref_anchor = anchor.detach().clone().requires_grad_()
    assert_same(ours, reference_nce(ref_anchor, rows, z, n, 0.07), (anchor,), (ref_anchor,))


def crd_setup(n=12, k=5):
    labels = torch.tensor([0, 1, 2] * (n // 3))
    crd = make("crd", feat_dim=4, nce_k=k)
    crd.attach(labels, [], [])
    g = torch.Generator().manual_seed(2)
    fs = torch.randn(n, 3, generator=g, dtype=torch.float64)
    ft = torch.randn(n, 5, generator=g, dtype=torch.float64)
    torch.manual_seed(3)
    state = crd.trainable([fs[:2]], [ft[:2]]).double()
    return crd, state, labels, fs, ft


def test_a_crd_training_batch_is_the_two_sided_nce_on_the_banks_then_updates_them():
    crd, state, labels, fs, ft = crd_setup()
    drawn, draw = [], state.negatives
    state.negatives = lambda idx: drawn.append(draw(idx)) or drawn[-1]
    idx = torch.tensor([4, 0, 9])
    before = copy.deepcopy(state)
    student = fs[idx].clone().requires_grad_()
    ours = crd.batch_terms([student], [ft[idx]], labels[idx], None, idx)["loss_crd"]

    neg = drawn[0]
    assert neg.shape == (3, 5) and (labels[neg] != labels[idx][:, None]).all()  # negatives of other classes
    ref_student = student.detach().clone().requires_grad_()
    v_s = F.normalize(before.embed_s(ref_student), dim=1)
    v_t = F.normalize(before.embed_t(ft[idx]), dim=1)
    rows = torch.cat([idx[:, None], neg], 1)
    ref = 0
    for anchor, bank in ((v_s, before.memory_t), (v_t, before.memory_s)):
        z = torch.exp(torch.bmm(bank[rows], anchor.detach()[:, :, None]) / 0.07).mean() * 12  # Z of the first batch
        ref = ref + reference_nce(anchor, bank[rows], z, 12, 0.07)
    assert_same(ours, 0.8 * ref, (student,), (ref_student,))

    m = 0.5  # the bank rows of the batch: the momentum average, renormalised; the others unchanged
    torch.testing.assert_close(state.memory_s[idx], F.normalize(m * before.memory_s[idx] + (1 - m) * v_s, dim=1))
    torch.testing.assert_close(state.memory_t[idx], F.normalize(m * before.memory_t[idx] + (1 - m) * v_t, dim=1))
    others = torch.ones(12, dtype=torch.bool)
    others[idx] = False
    assert torch.equal(state.memory_s[others], before.memory_s[others])
    assert (state.z > 0).all() and (before.z < 0).all()


def test_crd_validation_changes_nothing_and_a_saved_state_resumes_the_same_draws_and_losses():
    crd, state, labels, fs, ft = crd_setup()
    crd.batch_terms([fs[:3]], [ft[:3]], labels[:3], None, torch.arange(3))
    saved = copy.deepcopy(state.state_dict())
    crd.terms([fs[5:8]], [ft[5:8]], None, None)
    assert all(torch.equal(v, state.state_dict()[k]) for k, v in saved.items())
    idx = torch.tensor([6, 2, 11])
    first = crd.batch_terms([fs[idx]], [ft[idx]], labels[idx], None, idx)["loss_crd"]

    resumed, state2, *_ = crd_setup()
    state2.load_state_dict(saved)
    again = resumed.batch_terms([fs[idx]], [ft[idx]], labels[idx], None, idx)["loss_crd"]
    assert again.item() == first.item()
    assert all(torch.equal(v, state.state_dict()[k]) for k, v in state2.state_dict().items())


def test_crd_caps_its_negatives_at_the_training_set_size():
    _, state, *_ = crd_setup(n=9, k=16384)
    assert state.k == 9 and state.memory_s.shape == (9, 4)


# OFD


def reference_partial_l2(s, t, m):
    """Heo et al. (2019), Eq. 3-4: T = max(t, m) per channel; d_p = sum over the entries of (T - S)^2 except
    where S <= T <= 0; divided by the batch size."""
    total = 0
    n, c, h, w = s.shape
    for i in range(n):
        for j in range(c):
            for y in range(h):
                for x in range(w):
                    target = torch.maximum(t[i, j, y, x], m[j])
                    if not (s[i, j, y, x] <= target <= 0):
                        total = total + (target - s[i, j, y, x]) ** 2
    return total / n


def test_ofd_partial_l2_matches_the_papers_equation_in_value_and_gradient():
    from kd_runner.methods.ofd import partial_l2

    g = torch.Generator().manual_seed(4)
    s = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 2, 2, generator=g, dtype=torch.float64)
    m = torch.tensor([-0.5, -1.0, -0.2], dtype=torch.float64)
    ref_s = s.detach().clone().requires_grad_()
    assert_same(partial_l2(s, t, m.view(1, 3, 1, 1)), reference_partial_l2(ref_s, t, m), (s,), (ref_s,))


def test_ofd_margin_is_the_expected_negative_preactivation_of_the_bn_and_minus_3_sigma_when_rare():
    from kd_runner.methods.ofd import margin

    bn = torch.nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -0.5, 0.2]))
        bn.bias.copy_(torch.tensor([0.0, 0.3, 1.0]))  # channel 3: P(x < 0) = Phi(-5) < 0.001
    ours = margin(bn, 3)
    for c, (gamma, beta) in enumerate([(1.0, 0.0), (0.5, 0.3)]):  # E[x | x < 0] by numerical integration
        x = torch.linspace(beta - 12 * gamma, 0, 200001, dtype=torch.float64)
        density = torch.exp(-(((x - beta) / gamma) ** 2) / 2)
        expected = torch.trapezoid(x * density, x) / torch.trapezoid(density, x)
        assert ours[c].item() == pytest.approx(expected.item(), abs=1e-6)
    assert ours[2].item() == pytest.approx(-0.6) and margin(None, 2).tolist() == pytest.approx([-0.797885] * 2)


def test_ofd_margin_comes_from_the_last_bn_of_a_resnet_stage_outside_the_shortcut():
    from kd_runner.methods.ofd import _bn_before_relu
    from kd_runner.models.cifar_nets import CifarResNet

    net = CifarResNet(8, (8, 8, 16, 32), 3, 10)  # one block a stage, the second and third with a shortcut
    assert _bn_before_relu(net.layer2, 16) is net.layer2[-1].bn2  # mdistiller's get_bn_before_relu
    assert _bn_before_relu(net.layer3, 32) is net.layer3[-1].bn2 and _bn_before_relu(net.layer3, 7) is None


def test_ofd_connects_the_student_replaces_the_teachers_zeros_by_the_margin_and_halves_per_stage():
    from kd_runner.methods.ofd import margin, partial_l2

    g = torch.Generator().manual_seed(5)
    student = [torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    teacher = [torch.randn(2, 4, 4, 4, generator=g, dtype=torch.float64).relu() for _ in range(2)]
    bns = [torch.nn.BatchNorm2d(4), torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.BatchNorm2d(4))]
    with torch.no_grad():
        bns[1][1].weight.uniform_(0.5, 2.0, generator=g)
        bns[1][1].bias.uniform_(-1.0, 1.0, generator=g)
    ofd = make("ofd", weight_ofd=1.0)
    ofd.attach(torch.zeros(4, dtype=torch.long), [], bns)
    module = ofd.trainable(student, teacher).double()
    torch.testing.assert_close(module.margin1, margin(bns[1][1], 4).double())
    ours = ofd.terms(student, [t.requires_grad_() for t in teacher], None, None)["loss_ofd"]
    expected = 0
    for i, (connect, fs, ft) in enumerate(zip(module.connectors, student, teacher)):
        m = getattr(module, f"margin{i}").view(1, 4, 1, 1)
        expected = expected + partial_l2(connect(fs), torch.where(ft == 0, m, ft), m) / 2 ** (1 - i)
    assert ours.item() == pytest.approx(expected.item(), rel=1e-12)
    ours.backward()
    assert all(t.grad is None for t in teacher) and module.connectors[0][0].weight.grad.abs().sum() > 0


# ReviewKD


def block_mean(f, size):
    """Average over size x size equal blocks, written out (the map's side a multiple of size)."""
    n, c, h, w = f.shape
    return f.reshape(n, c, size, h // size, size, w // size).mean(dim=(3, 5))


def reference_hcl(student, teacher):
    """Chen et al. (2021), HCL: per level sum_k w_k MSE(P_k(S), P_k(T)) / sum_k w_k over the map itself (w 1) and
    its pools to 4, 2, 1 smaller than it (w halving each time); summed over the levels."""
    total = 0
    for fs, ft in zip(student, teacher):
        terms = [(1.0, ((fs - ft) ** 2).mean())]
        for size in (4, 2, 1):
            if size < fs.shape[2]:
                terms.append((terms[-1][0] / 2, ((block_mean(fs, size) - block_mean(ft, size)) ** 2).mean()))
        total = total + sum(w * v for w, v in terms) / sum(w for w, _ in terms)
    return total


def test_hcl_matches_the_papers_equation_in_value_and_gradient_and_a_constant_shift_costs_its_square():
    from kd_runner.methods.reviewkd import hcl_loss

    g = torch.Generator().manual_seed(6)
    shapes = [(2, 3, 8, 8), (2, 4, 4, 4), (2, 5, 1, 1)]
    student = [torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True) for s in shapes]
    teacher = [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]
    ref_student = [s.detach().clone().requires_grad_() for s in student]
    assert_same(hcl_loss(student, teacher), reference_hcl(ref_student, teacher), student, ref_student)
    shifted = [t + 0.3 for t in teacher]  # every pooled difference is the same 0.3: each level costs 0.09
    assert hcl_loss(shifted, teacher).item() == pytest.approx(3 * 0.09, abs=1e-12)


def nearest(x, size):
    """Nearest upsampling by an integer factor, written out."""
    factor = size // x.shape[-1]
    return x.repeat_interleave(factor, dim=2).repeat_interleave(factor, dim=3)


def test_reviewkd_fuses_from_the_deepest_level_with_attention_and_matches_the_teachers_sizes():
    g = torch.Generator().manual_seed(7)
    student = [torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64, requires_grad=True)]
    teacher = [torch.randn(2, 6, 8, 8, generator=g, dtype=torch.float64)]
    rkd = make("reviewkd", warmup=4)
    abfs = rkd.trainable(student, teacher).double()
    assert "att_conv" not in abfs[0] and "att_conv" in abfs[1]  # the deepest level (the pooled one) has no fusion
    ours = rkd.terms(student, teacher, None, None)["loss_reviewkd"]

    pooled_s, pooled_t = student[0].mean(dim=(2, 3), keepdim=True), teacher[0].mean(dim=(2, 3), keepdim=True)
    deep = abfs[0]["conv1"](pooled_s)  # 1 x 1, already the teacher's pooled size
    out_deep = abfs[0]["conv2"](deep)
    x = abfs[1]["conv1"](student[0])
    y = nearest(deep, 4)
    z = abfs[1]["att_conv"](torch.cat([x, y], 1))
    fused = nearest(x * z[:, 0:1] + y * z[:, 1:2], 8)  # the student's 4 x 4 brought to the teacher's 8 x 8
    out = abfs[1]["conv2"](fused)
    expected = 5.0 / 4 * reference_hcl([out, out_deep], [teacher[0], pooled_t])  # epoch 1 of a 4-epoch warm-up
    assert ours.item() == pytest.approx(expected.item(), rel=1e-12)
    rkd.start_epoch(9)
    assert rkd.terms(student, teacher, None, None)["loss_reviewkd"].item() == pytest.approx(4 * ours.item())
