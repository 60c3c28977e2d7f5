"""Validation metrics against values computed by hand (plain python math, no torch losses)."""

import pytest
import torch
from helpers import kd_objective
from references import hand_ce, hand_kl, hand_logit_gap, hand_mse

from kd_runner.names import METRIC_NAMES, TOP5_NAMES
from kd_runner.train.metrics import (
    accuracy,
    compute_metrics,
    per_class_accuracy,
    top5_accuracy,
)

# 4 samples x 3 classes. Student argmax: 0, 1, 2, 0; teacher argmax: 0, 0, 1, 2; labels 0, 1, 2, 2.
# So the student is right on 3/4, the teacher on 2/4 (samples 0 and 3), and they agree on 1/4 (sample 0).
STUDENT = [[2.0, 0.5, 0.1], [0.3, 1.2, -0.4], [0.0, 0.2, 0.9], [1.0, 0.4, 0.6]]
TEACHER = [[1.5, 0.2, -0.3], [0.9, 0.1, 0.4], [-0.2, 1.1, 0.3], [0.8, 0.0, 1.7]]
LABELS = [0, 1, 2, 2]


def tensors():
    return torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor(LABELS)


def test_accuracy_is_top1_fraction():
    s, t, y = tensors()
    assert accuracy(s, y) == 0.75
    assert accuracy(t, y) == 0.5
    assert isinstance(accuracy(s, y), float)


def test_accuracy_of_no_samples_is_an_error():
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))


def test_top5_accuracy_counts_a_label_among_the_five_highest_logits():
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5], [5.0, 4, 3, 2, 1, 0]])
    labels = torch.tensor([4, 0, 5])  # 5th highest: in; lowest: out; lowest: out
    assert top5_accuracy(logits, labels) == pytest.approx(1 / 3)  # a float32 mean
    metrics = compute_metrics(logits, logits.flip(-1), labels, 0.0)
    assert list(metrics) == [*METRIC_NAMES, *TOP5_NAMES]
    assert metrics["student_acc_top5"] == pytest.approx(1 / 3) and metrics["teacher_acc_top5"] == 1.0


def test_compute_metrics_hand_values():
    s, t, y = tensors()
    metrics = compute_metrics(s, t, y, kd_objective(s, t, y, 0.3, 2.0, "kl", validation=True))
    assert list(metrics) == list(METRIC_NAMES)
    assert all(type(value) is float for value in metrics.values())

    student_ce = hand_ce(STUDENT, LABELS)
    assert metrics["student_acc"] == 0.75
    assert metrics["teacher_acc"] == 0.5
    assert metrics["agreement"] == 0.25
    assert metrics["student_loss"] == pytest.approx(student_ce, rel=1e-6)
    assert metrics["objective"] == pytest.approx(
        0.3 * student_ce + 0.7 * 4.0 * hand_kl(STUDENT, TEACHER, 2.0), rel=1e-5
    )
    # |t - s| summed over the 12 entries: 0.5+0.3+0.4 + 0.6+1.1+0.8 + 0.2+0.9+0.6 + 0.2+0.4+1.1 = 7.1
    assert metrics["logit_gap"] == pytest.approx(7.1 / 12, rel=1e-6)
    assert metrics["logit_gap"] == pytest.approx(hand_logit_gap(STUDENT, TEACHER), rel=1e-6)
    assert metrics["kl_teacher_student"] == pytest.approx(hand_kl(STUDENT, TEACHER, 1.0), rel=1e-5)


@pytest.mark.parametrize(
    "kind, soft",
    [
        ("kl", lambda T: T * T * hand_kl(STUDENT, TEACHER, T)),
        ("mse", lambda T: hand_mse(STUDENT, TEACHER)),
    ],
)
def test_objective_uses_the_runs_kind(kind, soft):
    s, t, y = tensors()
    metrics = compute_metrics(s, t, y, kd_objective(s, t, y, 0.6, 3.0, kind, validation=True))
    assert metrics["objective"] == pytest.approx(0.6 * hand_ce(STUDENT, LABELS) + 0.4 * soft(3.0), rel=1e-5)


def test_only_the_objective_depends_on_alpha_temperature_and_kind():
    """student_loss etc. are comparable across the runs of a sweep; the objective is the run's own."""
    s, t, y = tensors()
    runs = [
        compute_metrics(s, t, y, kd_objective(s, t, y, alpha, temperature, kind, validation=True))
        for alpha, temperature, kind in [(0.0, 4.0, "kl"), (0.5, 2.0, "soft_ce"), (1.0, 1.0, "mse")]
    ]
    for name in METRIC_NAMES:
        values = {run[name] for run in runs}
        assert len(values) == (3 if name == "objective" else 1), name
    assert runs[2]["objective"] == runs[2]["student_loss"]  # alpha = 1: the objective is plain CE


def test_metrics_of_identical_models():
    s, _, y = tensors()
    metrics = compute_metrics(s, s.clone(), y, 0.0)
    assert metrics["agreement"] == 1.0
    assert metrics["logit_gap"] == 0.0
    assert metrics["kl_teacher_student"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["student_acc"] == metrics["teacher_acc"]


def test_metrics_accept_low_precision_and_grad_tracking_logits():
    s, t, y = tensors()
    reference = compute_metrics(s.bfloat16().float(), t.bfloat16().float(), y, 0.0)
    student = s.bfloat16().requires_grad_()
    metrics = compute_metrics(student, t.bfloat16(), y, 0.0)
    assert metrics == pytest.approx(reference, rel=1e-6)


def test_mismatched_shapes_are_an_error():
    s, _, y = tensors()
    with pytest.raises(ValueError, match="same shape"):
        compute_metrics(s, torch.zeros(4, 5), y, 0.0)


def test_per_class_accuracy_with_an_empty_class():
    # labels: three of class 0, one of class 1, two of class 2, none of class 3.
    # preds:  0, 0, 3 | 1 | 2, 0  -> class 0: 2/3, class 1: 1/1, class 2: 1/2, class 3: no sample.
    # Predicting class 3 (sample 2) must not make class 3 count as having samples.
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    logits = torch.tensor(
        [
            [3.0, 0.0, 0.0, 0.0],
            [2.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 1.0],
            [0.0, 5.0, 1.0, 0.0],
            [0.0, 0.0, 2.0, 1.0],
            [1.0, 0.0, 0.5, 0.0],
        ]
    )
    result = per_class_accuracy(logits, labels, num_classes=4)
    assert result == [pytest.approx(2 / 3), 1.0, 0.5, None]
    assert all(value is None or type(value) is float for value in result)
