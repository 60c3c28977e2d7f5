"""FitNets' hint, attention transfer and RKD against hand computations and references written here from
the papers' equations (float64, explicit loops); the layer taps and their one-line errors."""

import math

import pytest
import torch
import torch.nn.functional as F

from kd_runner import methods
from kd_runner.errors import UserError
from kd_runner.methods.at import attention_loss, attention_map
from kd_runner.methods.features import FeatureTap, default_layers
from kd_runner.methods.rkd import rkd_angle, rkd_distance
from kd_runner.models.small_nets import MLP, SmallCNN


def test_attention_map_is_the_normalised_channel_mean_of_squares_by_hand():
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 0.0]]]], dtype=torch.float64)  # 1 x 2 channels x 1 x 2
    # channel means of F^2: [(1 + 9) / 2, (4 + 0) / 2] = [5, 2]; L2 norm sqrt(29)
    expected = torch.tensor([[5.0, 2.0]], dtype=torch.float64) / math.sqrt(29)
    torch.testing.assert_close(attention_map(features), expected)


def test_attention_loss_pools_the_larger_map_and_averages_the_squared_map_difference():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    teacher = torch.randn(2, 5, 2, 2, generator=g, dtype=torch.float64)
    pooled = student.view(2, 3, 2, 2, 2, 2).mean(dim=(3, 5))  # 2x2 average pooling written out
    q_s = pooled.pow(2).sum(1).flatten(1)
    q_t = teacher.pow(2).sum(1).flatten(1)
    expected = ((q_s / q_s.norm(dim=1, keepdim=True) - q_t / q_t.norm(dim=1, keepdim=True)) ** 2).mean()
    assert attention_loss([student], [teacher]).item() == pytest.approx(expected.item(), abs=1e-12)
    assert attention_loss([student, student], [teacher, teacher]).item() == pytest.approx(2 * expected.item())


def huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def reference_rkd(s, t):
    """Park et al. (2019): psi_D = ||e_i - e_j|| / mu (mu over i != j), psi_A = <e_ij, e_kj>; Huber, mean."""
    n = len(s)

    def distances(e):
        d = [[(e[i] - e[j]).norm() if i != j else e.new_zeros(()) for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[d[i][j] / mu for j in range(n)] for i in range(n)]

    def unit(e, i, j):
        return (e[i] - e[j]) / (e[i] - e[j]).norm() if i != j else e.new_zeros(e.shape[1])

    ds, dt = distances(s), distances(t)
    distance = sum(huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2
    angle = sum(
        huber(unit(s, i, j) @ unit(s, k, j) - unit(t, i, j) @ unit(t, k, j))
        for i in range(n)
        for j in range(n)
        for k in range(n)
    )
    return distance, angle / n**3


def test_rkd_distance_and_angle_match_the_papers_equations_in_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = 2.0 * torch.randn(5, 3, generator=g, dtype=torch.float64)
    ref_s = s.detach().clone().requires_grad_()
    ref_distance, ref_angle = reference_rkd(ref_s, t)
    for ours, ref in [(rkd_distance(s, t), ref_distance), (rkd_angle(s, t), ref_angle)]:
        assert ours.item() == pytest.approx(ref.item(), abs=1e-6)
        (grad,) = torch.autograd.grad(ours, s)
        (ref_grad,) = torch.autograd.grad(ref, ref_s)
        torch.testing.assert_close(grad, ref_grad, atol=1e-6, rtol=0)


def test_rkd_is_zero_for_a_scaled_copy_of_the_teachers_embedding():
    t = torch.randn(6, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert rkd_distance(3.0 * t, t).item() == pytest.approx(0, abs=1e-12)
    assert rkd_angle(3.0 * t, t).item() == pytest.approx(0, abs=1e-12)


def test_hint_regressor_maps_student_channels_to_the_teachers_and_trains():
    student = torch.randn(2, 4, 4, 4, requires_grad=True)
    teacher = torch.randn(2, 6, 2, 2, requires_grad=True)
    fitnet = methods.make(methods.params_type("fitnet")(weight_hint=1.0), 4.0, "kl")
    conv, bn = fitnet.trainable([student], [teacher])[0]
    assert tuple(conv.weight.shape) == (6, 4, 1, 1) and bn.num_features == 6
    loss = fitnet.terms([student], [teacher], None, None)["loss_hint"]
    assert loss.item() == pytest.approx(F.mse_loss(F.avg_pool2d(bn(conv(student)), 2), teacher).item(), rel=1e-6)
    loss.backward()
    assert conv.weight.grad.abs().sum() > 0 and student.grad.abs().sum() > 0
    assert teacher.grad is None  # detached: nothing flows to the teacher


def test_a_tap_keeps_the_named_layers_outputs():
    model = SmallCNN(1, 10, 8, width=4, depth=2)
    tap = FeatureTap(model, ["features.2", "pool"], "distill.student_layers")
    model(torch.randn(3, 1, 8, 8))
    assert [tuple(f.shape) for f in tap.features()] == [(3, 4, 8, 8), (3, 8, 1, 1)]
    tap.remove()


def test_an_unknown_layer_is_one_line_listing_the_models_layers():
    with pytest.raises(UserError) as exc:
        FeatureTap(SmallCNN(1, 10, 8, width=4, depth=2), ["layer3"], "distill.student_layers")
    message = str(exc.value)
    assert "\n" not in message and "'layer3'" in message and "features.0, features.1" in message and "fc" in message


def test_default_layers_are_the_last_feature_map_and_the_embedding_before_the_head():
    cnn, sample = SmallCNN(1, 10, 8, width=4, depth=2), torch.randn(2, 1, 8, 8)
    assert default_layers(cnn, sample, embedding=False, key="k") == ["features"]
    assert default_layers(cnn, sample, embedding=True, key="k") == ["pool"]
    mlp = MLP(1, 10, 8, width=16, depth=1)
    assert default_layers(mlp, sample, embedding=True, key="k") == ["body"]
    with pytest.raises(UserError, match="no top-level layer that outputs a feature map"):
        default_layers(mlp, sample, embedding=False, key="k")


@pytest.mark.parametrize("method, refused", [("at", True), ("fitnet", False)])
def test_a_one_position_map_is_refused_where_the_method_would_learn_nothing_from_it(method, refused):
    """AT normalises each map over its positions: on a 1 x 1 map the attention is constantly 1 and loss_at 0."""
    from kd_runner.methods.objective import feature_taps

    student, teacher = SmallCNN(1, 10, 8, width=4, depth=2), SmallCNN(1, 10, 8, width=8, depth=2)
    made = methods.make(methods.params_type(method)(), 4.0, "kl")
    layers = (["features"], ["pool"])
    if not refused:
        for tap in feature_taps(made, *layers, student, teacher, torch.randn(2, 1, 8, 8)):
            tap.remove()
        return
    with pytest.raises(UserError) as exc:
        feature_taps(made, *layers, student, teacher, torch.randn(2, 1, 8, 8))
    message = str(exc.value)
    assert "\n" not in message and message.startswith("distill.teacher_layers: layer 'pool' outputs a 1 x 1 map")


def test_at_weighs_its_term_by_beta_as_repdistiller_does():
    """RepDistiller's `-b 1000` is beta * sum over layers of the mean squared attention difference (no 1/2):
    distill.beta=1000 is that published weight."""
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 4, 4, 4, generator=g), torch.randn(2, 8, 4, 4, generator=g)
    at = methods.make(methods.params_type("at")(beta=1000.0), 4.0, "kl")
    loss = at.terms([student], [teacher], None, None)["loss_at"]
    q_s = F.normalize(student.pow(2).mean(1).view(2, -1))  # RepDistiller's Attention.at, p = 2
    q_t = F.normalize(teacher.pow(2).mean(1).view(2, -1))
    assert loss.item() == pytest.approx(1000.0 * (q_s - q_t).pow(2).mean().item(), rel=1e-6)
