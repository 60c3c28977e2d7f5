"""The distillation objective against values computed by hand (plain python math, no torch losses)."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import kd_objective
from references import hand_ce, hand_entropy, hand_kl, hand_logit_gap, hand_mse, hand_soft_ce, softmax
from torch import nn

from kd_runner.methods.logits import soft_loss
from kd_runner.names import SOFT_LOSSES

# 2 samples x 3 classes, written out so that every expected value below can be recomputed on paper.
STUDENT = [[1.0, 2.0, 0.5], [0.2, -1.0, 1.5]]
TEACHER = [[2.0, 0.5, -0.5], [0.0, 0.3, 2.5]]
LABELS = [1, 2]


def tensors():
    return torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)


def test_reference_math_on_a_known_case():
    """Anchor the reference helpers (references.py) themselves: textbook values."""
    assert softmax([0.0, 0.0, 0.0]) == pytest.approx([1 / 3] * 3, abs=1e-15)
    assert hand_entropy([[0.0, 0.0, 0.0]], 1.0) == pytest.approx(math.log(3), abs=1e-15)
    assert hand_kl([[0.0, 0.0]], [[0.0, 0.0]], 1.0) == 0.0
    # KL([e/(1+e), 1/(1+e)] || [1/2, 1/2]) written out.
    p = math.e / (1 + math.e)
    expected = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    assert hand_kl([[0.0, 0.0]], [[1.0, 0.0]], 1.0) == pytest.approx(expected, abs=1e-15)
    assert softmax([1000.0, 0.0]) == [1.0, 0.0]  # no overflow for large logits
    assert hand_ce([[0.0, 0.0], [math.log(3), 0.0]], [1, 0]) == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
    # soft CE = H(p) + KL(p || q); against a uniform student it is log(classes) whatever the teacher
    assert hand_soft_ce([[0.0, 0.0, 0.0]], [[3.0, 1.0, -2.0]], 1.0) == pytest.approx(math.log(3), abs=1e-15)
    # entries (0 - 1), (1 - (-1)): squares 1 and 4, absolute values 1 and 2
    assert hand_mse([[0.0, 1.0]], [[1.0, -1.0]]) == 2.5
    assert hand_logit_gap([[0.0, 1.0]], [[1.0, -1.0]]) == 1.5


# ---- soft_loss kinds ---------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_kl_is_t_squared_times_hand_kl(temperature):
    s, t, _ = tensors()
    got = soft_loss(s, t, temperature, "kl")
    expected = temperature**2 * hand_kl(STUDENT, TEACHER, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_soft_ce_is_t_squared_times_hand_cross_entropy(temperature):
    s, t, _ = tensors()
    got = soft_loss(s, t, temperature, "soft_ce")
    expected = temperature**2 * hand_soft_ce(STUDENT, TEACHER, temperature)
    assert got.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_closed_form_values_at_t2():
    """One case fully on paper, so a wrong reference helper cannot hide a wrong loss.

    Teacher logits [2 ln 3, 0] at T=2 soften to [3/4, 1/4]; student logits [0, 0] to [1/2, 1/2].
    KL = 3/4 ln(3/2) + 1/4 ln(1/2), so T^2 KL = 3 ln(3/2) - ln 2 = ln(27/16);
    soft CE = -(3/4 + 1/4) ln(1/2) = ln 2, so T^2 CE = 4 ln 2.
    """
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[2 * math.log(3), 0.0]])
    assert soft_loss(student, teacher, 2.0, "kl").item() == pytest.approx(math.log(27 / 16), rel=1e-6)
    assert soft_loss(student, teacher, 2.0, "soft_ce").item() == pytest.approx(4 * math.log(2), rel=1e-6)


def test_mse_is_mean_squared_logit_difference_and_ignores_temperature():
    s, t, _ = tensors()
    expected = hand_mse(STUDENT, TEACHER)  # (1 + 2.25 + 1 + 0.04 + 1.69 + 1) / 6
    assert expected == pytest.approx(6.98 / 6, abs=1e-12)
    at_t1 = soft_loss(s, t, 1.0, "mse")
    assert at_t1.item() == pytest.approx(expected, rel=1e-6)
    assert torch.equal(at_t1, soft_loss(s, t, 7.0, "mse"))


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_soft_ce_minus_kl_is_t_squared_teacher_entropy(temperature):
    """CE(p, q) = H(p) + KL(p || q): the two kinds differ by a constant the student cannot change."""
    s, t, _ = tensors()
    difference = soft_loss(s, t, temperature, "soft_ce") - soft_loss(s, t, temperature, "kl")
    expected = temperature**2 * hand_entropy(TEACHER, temperature)
    assert difference.item() == pytest.approx(expected, rel=1e-5)


def test_identical_logits_give_zero_kl():
    s, _, _ = tensors()
    assert soft_loss(s, s.clone(), 3.0, "kl").item() == pytest.approx(0.0, abs=1e-6)
    assert soft_loss(s, s.clone(), 3.0, "mse").item() == 0.0


# ---- the T^2 scaling keeps the gradient size independent of T (Hinton et al. 2015, section 2.1) -----

# Zero-mean logits per sample, as in Hinton's high-temperature argument.
ZERO_MEAN_STUDENT = [[1.0, -0.5, -0.5], [0.3, 0.6, -0.9]]
ZERO_MEAN_TEACHER = [[-0.4, 1.2, -0.8], [0.5, -1.5, 1.0]]


def student_grad(temperature, kind="kl"):
    s = torch.tensor(ZERO_MEAN_STUDENT, requires_grad=True)
    soft_loss(s, torch.tensor(ZERO_MEAN_TEACHER), temperature, kind).backward()
    return s.grad


@pytest.mark.parametrize("temperature", [1.0, 5.0, 20.0])
def test_kl_gradient_is_t_times_softened_probability_difference(temperature):
    """d/ds [T^2 KL(p || q)] = T^2 * (q - p) / T = T (q - p), divided by the batch size (batch mean)."""
    batch = len(ZERO_MEAN_STUDENT)
    expected = [
        [temperature * (qc - pc) / batch for qc, pc in zip(softmax(s, temperature), softmax(t, temperature))]
        for s, t in zip(ZERO_MEAN_STUDENT, ZERO_MEAN_TEACHER)
    ]
    assert torch.allclose(student_grad(temperature), torch.tensor(expected), rtol=1e-4, atol=1e-7)


def test_t_squared_keeps_gradient_magnitude_across_temperatures():
    """Softening by T shrinks the soft-target gradient by 1/T^2 (Hinton: for large T and zero-mean logits
    dKL/ds_i ~ (s_i - t_i) / (N T^2)). Multiplying by T^2 undoes that, so the same logit gap pulls the
    student equally hard at T=1 and at T=100, and the soft term keeps its weight against the hard term
    when T changes. Without the T^2 the T=100 gradient would be ~10^4 times smaller than the T=1 one."""
    small_t, large_t = student_grad(1.0).norm().item(), student_grad(100.0).norm().item()
    assert 0.5 < large_t / small_t < 2.0
    # And in the high-temperature limit it tends to Hinton's (s - t) / N, here also / batch (batch mean).
    classes, batch = 3, 2
    limit = (torch.tensor(ZERO_MEAN_STUDENT) - torch.tensor(ZERO_MEAN_TEACHER)) / (classes * batch)
    assert torch.allclose(student_grad(1000.0), limit, atol=2e-4)


def test_soft_ce_and_kl_pull_the_student_the_same_way():
    """They differ by the teacher's entropy, which does not depend on the student: equal gradients."""
    assert torch.allclose(student_grad(2.0, "kl"), student_grad(2.0, "soft_ce"), atol=1e-7)


# ---- the alpha-weighted objective --------------------------------------------------------------------


def test_alpha_one_is_exactly_cross_entropy_without_a_teacher():
    s, t, y = tensors()
    got = kd_objective(s, None, y, alpha=1.0, temperature=4.0, kind="kl")
    assert torch.equal(got, F.cross_entropy(s, y))
    assert torch.equal(kd_objective(s, t, y, 1.0, 4.0, "kl"), got)
    assert got.item() == pytest.approx(hand_ce(STUDENT, LABELS), rel=1e-6)


@pytest.mark.parametrize("kind", SOFT_LOSSES)
def test_alpha_zero_has_no_hard_term(kind):
    s, t, y = tensors()
    unlabeled = kd_objective(s, t, None, alpha=0.0, temperature=2.0, kind=kind)
    assert torch.equal(unlabeled, soft_loss(s, t, 2.0, kind))
    for labels in (y, torch.tensor([0, 0]), torch.tensor([2, 1])):
        assert torch.equal(kd_objective(s, t, labels, 0.0, 2.0, kind), unlabeled)


def test_alpha_zero_kl_value_by_hand():
    s, t, _ = tensors()
    got = kd_objective(s, t, None, alpha=0.0, temperature=2.0, kind="kl")
    assert got.item() == pytest.approx(4.0 * hand_kl(STUDENT, TEACHER, 2.0), rel=1e-5)


def test_alpha_half_is_the_average_of_hard_and_soft():
    s, t, y = tensors()
    got = kd_objective(s, t, y, alpha=0.5, temperature=2.0, kind="kl")
    expected = 0.5 * hand_ce(STUDENT, LABELS) + 0.5 * 4.0 * hand_kl(STUDENT, TEACHER, 2.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "kind, unscaled_soft",
    [
        ("kl", lambda T: T * T * hand_kl(STUDENT, TEACHER, T)),
        ("soft_ce", lambda T: T * T * hand_soft_ce(STUDENT, TEACHER, T)),
        ("mse", lambda T: hand_mse(STUDENT, TEACHER)),
    ],
)
def test_alpha_weighs_the_hard_label_term(kind, unscaled_soft):
    """alpha multiplies the CE on the labels, (1 - alpha) the soft term: not the other way round."""
    s, t, y = tensors()
    got = kd_objective(s, t, y, alpha=0.3, temperature=3.0, kind=kind)
    expected = 0.3 * hand_ce(STUDENT, LABELS) + 0.7 * unscaled_soft(3.0)
    assert got.item() == pytest.approx(expected, rel=1e-5)


# ---- the teacher never learns from the student's loss ------------------------------------------------


@pytest.mark.parametrize("kind", SOFT_LOSSES)
def test_no_gradient_reaches_the_teacher(kind):
    torch.manual_seed(0)
    teacher, student = nn.Linear(4, 3), nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    teacher_logits = teacher(x)  # deliberately NOT under no_grad: the loss must detach it itself
    assert teacher_logits.requires_grad
    kd_objective(student(x), teacher_logits, y, alpha=0.5, temperature=2.0, kind=kind).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


# ---- guards and precision ------------------------------------------------------------------------------


def test_unknown_kind_is_a_value_error():
    s, t, y = tensors()
    with pytest.raises(ValueError, match="cosine"):
        soft_loss(s, t, 2.0, "cosine")
    with pytest.raises(ValueError, match="cosine"):
        kd_objective(s, t, y, 0.5, 2.0, "cosine")  # as a run computes it


def test_mismatched_logit_shapes_are_a_value_error():
    s, _, _ = tensors()
    with pytest.raises(ValueError, match="same shape"):
        soft_loss(s, torch.zeros(2, 4), 2.0, "mse")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", SOFT_LOSSES)
def test_low_precision_logits_are_computed_in_float32(dtype, kind):
    s, t, y = tensors()
    s_low, t_low = s.to(dtype), t.to(dtype)
    got = kd_objective(s_low, t_low, y, 0.5, 2.0, kind)
    assert got.dtype == torch.float32
    reference = kd_objective(s_low.float(), t_low.float(), y, 0.5, 2.0, kind)
    assert got.item() == pytest.approx(reference.item(), rel=1e-6)
