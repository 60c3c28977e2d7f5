"""Independent reference math for the loss and metric tests: plain python floats, no torch.

Rows are lists of logits (one per sample), labels are class indices; every value is a mean over samples.
test_losses.py anchors these helpers on textbook values, so a wrong helper cannot hide a wrong loss.
"""

from __future__ import annotations

import math


def softmax(row, temperature=1.0):
    """softmax(row / T), shifted by the row's maximum so that large logits do not overflow."""
    scaled = [x / temperature for x in row]
    top = max(scaled)
    exps = [math.exp(x - top) for x in scaled]
    total = sum(exps)
    return [e / total for e in exps]


def mean(values):
    return sum(values) / len(values)


def hand_ce(rows, labels):
    """Mean over samples of -log softmax(row)[label]."""
    return mean([-math.log(softmax(row)[y]) for row, y in zip(rows, labels)])


def hand_kl(student_rows, teacher_rows, temperature):
    """Unscaled mean over samples of KL(softmax(t/T) || softmax(s/T)) = sum_c p_c log(p_c / q_c)."""
    per_sample = []
    for s, t in zip(student_rows, teacher_rows):
        p, q = softmax(t, temperature), softmax(s, temperature)
        per_sample.append(sum(pc * math.log(pc / qc) for pc, qc in zip(p, q)))
    return mean(per_sample)


def hand_soft_ce(student_rows, teacher_rows, temperature):
    """Unscaled mean over samples of -sum_c softmax(t/T)_c log softmax(s/T)_c."""
    per_sample = []
    for s, t in zip(student_rows, teacher_rows):
        p, q = softmax(t, temperature), softmax(s, temperature)
        per_sample.append(-sum(pc * math.log(qc) for pc, qc in zip(p, q)))
    return mean(per_sample)


def hand_entropy(rows, temperature):
    """Mean over samples of the entropy of softmax(row/T)."""
    return mean([-sum(p * math.log(p) for p in softmax(row, temperature)) for row in rows])


def hand_mse(student_rows, teacher_rows):
    """Mean over every (sample, class) entry of (s - t)^2."""
    return mean([(s - t) ** 2 for srow, trow in zip(student_rows, teacher_rows) for s, t in zip(srow, trow)])


def hand_logit_gap(student_rows, teacher_rows):
    """Mean over every (sample, class) entry of |t - s|."""
    return mean([abs(t - s) for srow, trow in zip(student_rows, teacher_rows) for s, t in zip(srow, trow)])
