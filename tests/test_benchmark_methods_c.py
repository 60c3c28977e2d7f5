"""AB, FT and FSP (the methods with an init stage) against references written here from the papers' equations
(float64, small fixed tensors, explicit loops where the equation is a sum), in value and gradient; and which
modules each stage trains."""

import pytest
import torch
import torch.nn.functional as F

from kd_runner import methods
from kd_runner.errors import UserError


def make(name: str, **params):
    return methods.make(methods.params_type(name)(**params), 4.0, "kl")


def assert_same(ours, ref, inputs, ref_inputs):
    assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
    for g, rg in zip(torch.autograd.grad(ours, inputs), torch.autograd.grad(ref, ref_inputs)):
        torch.testing.assert_close(g, rg, atol=1e-6, rtol=0)


def maps(g, *shapes, grad=False):
    return [torch.randn(*s, generator=g, dtype=torch.float64).requires_grad_(grad) for s in shapes]


def copies(tensors):
    return [t.detach().clone().requires_grad_() for t in tensors]


# AB


def reference_ab(connected, teacher, margin):
    """Heo et al. (2019), Eq. 5: || rho(T) * relu(m - S) + (1 - rho(T)) * relu(m + S) ||^2 per layer, rho(T) = 1
    where the teacher's neuron is active; layer i of n weighted 2^(i - n + 1), / batch * 3 / 1000 (RepDistiller)."""
    total, n = 0, len(connected)
    for i, (s, t) in enumerate(zip(connected, teacher)):
        layer = 0
        for idx in torch.cartesian_prod(*(torch.arange(d) for d in s.shape)):
            si, active = s[tuple(idx)], t[tuple(idx)] > 0
            layer = layer + (torch.relu(margin - si) if active else torch.relu(margin + si)) ** 2
        total = total + 2.0 ** (i - n + 1) * layer
    return total / len(connected[0]) * 3 / 1000


def test_ab_is_the_margin_boundary_loss_of_the_paper_in_value_and_gradient():
    g = torch.Generator().manual_seed(0)
    ab = make("ab", margin=0.5)
    student = maps(g, (2, 3, 4, 4), (2, 4, 2, 2), grad=True)
    teacher = maps(g, (2, 3, 4, 4), (2, 5, 1, 1))
    connectors = ab.init_trainable(student, teacher).double()
    assert isinstance(connectors[0], torch.nn.Identity)  # equal shapes: no connector
    ours = ab.init_terms(student, teacher)["loss_ab"]
    ref_student = copies(student)
    ref = reference_ab([c(s) for c, s in zip(connectors, ref_student)], teacher, 0.5)
    assert_same(ours, ref, student, ref_student)


def test_ab_connectors_follow_repdistillers_convreg_and_its_student_stage_is_hintons_kd():
    ab = make("ab")
    s, t = torch.randn(2, 3, 8, 8), torch.randn(2, 6, 4, 4)
    connector = ab.init_trainable([s], [t])[0]
    assert connector[0].stride == (2, 2) and connector(s).shape == t.shape  # 2x larger: a stride-2 3x3 conv
    logits_s, logits_t = torch.randn(4, 5), torch.randn(4, 5)
    kd = make("kd").terms(logits_s, logits_t, None, None)["loss_kd"]
    torch.testing.assert_close(ab.terms(logits_s, logits_t, None, None)["loss_kd"], kd)
    assert ab.trainable([s], [t]) is None and ab.init_trains_student


# FSP


def reference_fsp_matrix(bottom, top):
    """Yim et al. (2017), Eq. 1: G[i, j] = sum_{s, t} F1[s, t, i] F2[s, t, j] / (h w), per sample."""
    n, c1, h, w = bottom.shape
    rows = []
    for k in range(n):
        rows.append(
            torch.stack(
                [
                    torch.stack([(bottom[k, i] * top[k, j]).sum() / (h * w) for i in range(c1)])
                    for j in range(top.shape[1])
                ]
            )
        )
    return torch.stack(rows)


def reference_fsp(student, teacher):
    """Eq. 2 with RepDistiller's normalisation: per consecutive pair the mean over samples and entries of
    (G_T - G_S)^2, summed over the pairs; a larger map average-pooled to the smaller first."""
    total = 0
    for (sb, st), (tb, tt) in zip(zip(student, student[1:]), zip(teacher, teacher[1:])):
        sb, tb = F.avg_pool2d(sb, sb.shape[-1] // st.shape[-1]), F.avg_pool2d(tb, tb.shape[-1] // tt.shape[-1])
        total = total + ((reference_fsp_matrix(sb, st) - reference_fsp_matrix(tb, tt)) ** 2).mean()
    return total


def test_fsp_is_the_squared_distance_between_flow_matrices_in_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    fsp = make("fsp")
    student = maps(g, (2, 3, 4, 4), (2, 3, 4, 4), (2, 4, 2, 2), grad=True)
    teacher = maps(g, (2, 3, 4, 4), (2, 3, 4, 4), (2, 4, 2, 2))
    assert fsp.init_trainable(student, teacher) is None
    ours = fsp.init_terms(student, teacher)["loss_fsp"]
    ref_student = copies(student)
    assert_same(ours, reference_fsp(ref_student, teacher), student, ref_student)


def test_fsp_refuses_layers_of_other_widths_or_a_single_layer():
    fsp = make("fsp")
    with pytest.raises(UserError, match="equal widths"):
        fsp.init_trainable([torch.randn(2, 3, 4, 4)] * 2, [torch.randn(2, 5, 4, 4)] * 2)
    with pytest.raises(UserError, match="two or more layers"):
        fsp.init_trainable([torch.randn(2, 3, 4, 4)], [torch.randn(2, 3, 4, 4)])


# FT


def reference_factor(f):
    """RepDistiller's factor of Kim et al. (2018), Eq. 3's F / ||F||_2: per sample the channel mean of F^2 at
    each position, divided by its L2 norm."""
    rows = []
    for k in range(len(f)):
        v = torch.stack([(f[k, :, i, j] ** 2).sum() / f.shape[1] for i in range(f.shape[2]) for j in range(f.shape[3])])
        rows.append(v / torch.sqrt((v**2).sum()))
    return torch.stack(rows)


def test_ft_is_the_l1_distance_between_normalised_factors_in_value_and_gradient():
    g = torch.Generator().manual_seed(2)
    ft = make("ft", weight_ft=3.0)
    student, teacher = maps(g, (2, 3, 4, 4), grad=True), maps(g, (2, 6, 2, 2))
    paraphraser = ft.init_trainable(student, teacher).double()
    module = ft.trainable(student, teacher).double()
    ours = ft.terms(student, teacher, None, None)["loss_ft"]
    ref_student = copies(student)
    fs = F.avg_pool2d(module["translator"](ref_student[0]), 2)  # the larger map pooled to the smaller
    diff = reference_factor(fs) - reference_factor(paraphraser[0](teacher[0]))
    ref = 3.0 * diff.abs().sum() / diff.numel()  # Eq. 3, p = 1, mean over samples and positions
    assert_same(ours, ref, student, ref_student)


def test_ft_init_trains_the_paraphraser_on_reconstruction_then_freezes_it():
    g = torch.Generator().manual_seed(3)
    ft = make("ft")
    student, teacher = maps(g, (2, 3, 4, 4)), maps(g, (2, 6, 2, 2))
    paraphraser = ft.init_trainable(student, teacher).double()
    assert not ft.init_trains_student and paraphraser[0][-2].out_channels == 3  # rate 0.5 of 6 channels
    ours = ft.init_terms(student, teacher)["loss_ft_rec"]
    ref = ((paraphraser(teacher[0]) - teacher[0]) ** 2).sum() / teacher[0].numel()
    weight = paraphraser[0][0].weight
    assert_same(ours, ref, [weight], [weight])
    module = ft.trainable(student, teacher)
    assert module["paraphraser"] is paraphraser and not any(p.requires_grad for p in paraphraser.parameters())
    assert all(p.requires_grad for p in module["translator"].parameters())


@pytest.mark.parametrize("name,needs", [("ab", "logits"), ("ft", "maps"), ("fsp", "logits")])
def test_the_init_stage_methods_default_to_repdistillers_settings(name, needs):
    method = make(name)
    assert method.params.init_epochs == 30 and method.has_init and method.needs == needs
    assert not make(name, init_epochs=0).has_init and not make("kd").has_init
