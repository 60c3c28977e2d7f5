"""DKD, DIST and logit standardisation against references written here from the papers' equations
(float64, explicit probabilities), on fixed tensors: values and gradients to 1e-6, plus their identities."""

import pytest
import torch
import torch.nn.functional as F

from kd_runner import methods
from kd_runner.methods import combine
from kd_runner.methods.dist import dist_terms
from kd_runner.methods.dkd import dkd_terms
from kd_runner.methods.logits import soft_loss, standardize

STUDENT = [[1.0, 2.0, 0.5, -0.3], [0.2, -1.0, 1.5, 0.7], [-0.4, 0.9, 0.1, 2.2]]
TEACHER = [[2.0, 0.5, -0.5, 0.1], [0.0, 0.3, 2.5, -1.2], [1.1, -0.2, 0.4, 1.9]]
LABELS = [1, 2, 3]


def tensors(dtype=torch.float64):
    s = torch.tensor(STUDENT, dtype=dtype, requires_grad=True)
    return s, torch.tensor(TEACHER, dtype=dtype), torch.tensor(LABELS)


def kl(p, q):
    return (p * (p / q).log()).sum(-1)


def reference_dkd(s, t, labels, temperature):
    """Zhao et al. (2022) Eq. 1-4: b = [p_t, 1 - p_t]; p^_i = p_i / (1 - p_t) over i != t."""
    p_s, p_t = (s / temperature).softmax(-1), (t / temperature).softmax(-1)
    tckd, nckd = [], []
    for i, y in enumerate(labels.tolist()):
        bs = torch.stack([p_s[i, y], 1 - p_s[i, y]])
        bt = torch.stack([p_t[i, y], 1 - p_t[i, y]])
        rest = [c for c in range(s.shape[1]) if c != y]
        tckd.append(kl(bt, bs))
        nckd.append(kl(p_t[i, rest] / (1 - p_t[i, y]), p_s[i, rest] / (1 - p_s[i, y])))
    return torch.stack(tckd), torch.stack(nckd)


def reference_dist(s, t, temperature):
    """Huang et al. (2022) Eq. 5-7: 1 - mean Pearson correlation, per sample (rows) and per class (columns)."""

    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        return (a * b).sum() / (a.pow(2).sum().sqrt() * b.pow(2).sum().sqrt())

    p_s, p_t = (s / temperature).softmax(-1), (t / temperature).softmax(-1)
    inter = 1 - torch.stack([pearson(p_s[i], p_t[i]) for i in range(len(s))]).mean()
    intra = 1 - torch.stack([pearson(p_s[:, c], p_t[:, c]) for c in range(s.shape[1])]).mean()
    return inter * temperature**2, intra * temperature**2


def assert_value_and_gradient(ours, reference, inputs, reference_inputs):
    assert ours.item() == pytest.approx(reference.item(), abs=1e-6)
    (grad,) = torch.autograd.grad(ours, inputs)
    (ref_grad,) = torch.autograd.grad(reference, reference_inputs)
    torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_terms_match_the_papers_equations(temperature):
    s, t, labels = tensors()
    ref_s = s.detach().clone().requires_grad_()
    tckd, nckd = dkd_terms(s, t, labels, temperature)
    ref_tckd, ref_nckd = reference_dkd(ref_s, t, labels, temperature)
    assert_value_and_gradient(tckd.sum() + 2 * nckd.sum(), ref_tckd.sum() + 2 * ref_nckd.sum(), s, ref_s)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dkd_with_weights_one_and_one_minus_pt_is_classic_kd_per_sample(temperature):
    s, t, labels = tensors(torch.float64)
    tckd, nckd = dkd_terms(s, t, labels, temperature)
    p_target = (t / temperature).softmax(-1).gather(1, labels[:, None]).squeeze(1)
    classic = F.kl_div((s / temperature).log_softmax(-1), (t / temperature).softmax(-1), reduction="none").sum(-1)
    torch.testing.assert_close(tckd + (1 - p_target) * nckd, classic, atol=1e-6, rtol=0)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_dist_terms_match_the_papers_equations(temperature):
    s, t, _ = tensors()
    ref_s = s.detach().clone().requires_grad_()
    inter, intra = dist_terms(s, t, temperature, eps=0.0)  # the authors' code adds 1e-8 to the denominators
    ref_inter, ref_intra = reference_dist(ref_s, t, temperature)
    assert_value_and_gradient(inter + 3 * intra, ref_inter + 3 * ref_intra, s, ref_s)


def test_dist_is_zero_when_the_student_predicts_like_the_teacher():
    _, t, _ = tensors()
    inter, intra = dist_terms(t.clone(), t, 1.0)
    assert inter.item() == pytest.approx(0, abs=1e-6) and intra.item() == pytest.approx(0, abs=1e-6)


def test_standardize_is_the_z_score_with_unbiased_std():
    s, _, _ = tensors(torch.float64)
    row = s[0].detach()
    mean = row.sum() / 4
    std = ((row - mean).pow(2).sum() / 3).sqrt()
    torch.testing.assert_close(standardize(s)[0], (row - mean) / (std + 1e-7))


def objective(method="kd", soft_loss="kl", epoch=1, **params) -> methods.Method:
    """The method as a run makes it (temperature 4), training its `epoch`."""
    made = methods.make(methods.params_type(method)(**params), 4.0, soft_loss)
    made.start_epoch(epoch)
    return made


@pytest.mark.parametrize("method,params", [("kd", {}), ("dkd", dict(weight_tckd=1.0, weight_nckd=8.0, warmup=0))])
def test_standardised_losses_ignore_a_shift_and_a_scale_of_either_models_logits(method, params):
    """Exact for a shift; for a scale up to the 1e-7 that Sun et al.'s code adds to the std."""
    s, t, labels = tensors()
    obj = objective(method, standardize=True, **params)
    base = obj.terms(s, t, labels, None)
    shifted = obj.terms(s - 1.5, t + 4.0, labels, None)
    scaled = obj.terms(3.0 * s, 0.5 * t, labels, None)
    for name in base:
        assert shifted[name].item() == pytest.approx(base[name].item(), abs=1e-12)
        assert scaled[name].item() == pytest.approx(base[name].item(), rel=1e-5)
    plain = objective(method, **params)  # without standardisation a scale changes the loss
    name = next(iter(base))
    assert plain.terms(3.0 * s, t, labels, None)[name].item() != pytest.approx(
        plain.terms(s, t, labels, None)[name].item()
    )


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_kd_objective_is_exactly_the_classic_distillation_loss(alpha):
    s, t, labels = tensors(torch.float32)
    obj = objective("kd", soft_loss="soft_ce")
    parts = {"loss_ce": F.cross_entropy(s, labels)} if alpha > 0 else {}
    if alpha < 1:
        parts.update(obj.terms(s, t, labels, None))
    hard, soft = F.cross_entropy(s, labels), soft_loss(s, t, 4.0, "soft_ce")
    classic = hard if alpha == 1 else soft if alpha == 0 else alpha * hard + (1 - alpha) * soft
    assert torch.equal(combine(alpha, parts), classic)


def test_dkd_parts_are_the_weighted_t_squared_terms_warmed_up_linearly():
    s, t, labels = tensors()
    tckd, nckd = dkd_terms(s, t, labels, 4.0)
    for epoch, factor in [(1, 0.25), (2, 0.5), (4, 1.0), (9, 1.0)]:
        parts = objective("dkd", epoch=epoch, weight_tckd=2.0, weight_nckd=8.0, warmup=4).terms(s, t, labels, None)
        assert parts["loss_tckd"].item() == pytest.approx(factor * 2.0 * 16 * tckd.mean().item(), rel=1e-6)
        assert parts["loss_nckd"].item() == pytest.approx(factor * 8.0 * 16 * nckd.mean().item(), rel=1e-6)
