"""Uncertainty of a sweep's numbers: the 95% confidence interval of a mean over seeds, and the gain of a
point over its alpha=1 baseline paired by seed with the paired t-test (scipy.stats).

Both assume the seeds' values are independent draws from a roughly normal distribution; with fewer than
two values, or values all equal, there is no spread to estimate, so the interval and p are NaN (an empty
CSV cell).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

LEVEL = 0.95


def mean_ci(values) -> tuple[float, float]:
    """The Student-t 95% confidence interval of the mean of `values`; NaN, NaN when fewer than two or all
    equal: with no spread observed there is nothing to scale an interval by, and a zero-width one would
    claim a certainty that a handful of equal values does not give."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    mean, sem = float(values.mean()), float(stats.sem(values))
    if no_spread(sem, mean):
        return math.nan, math.nan
    low, high = stats.t.interval(LEVEL, len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def no_spread(spread: float, mean: float) -> bool:
    """Values equal up to float rounding (accuracies k/n subtracted rarely cancel exactly)."""
    return spread <= 1e-9 * max(1.0, abs(mean))


def paired_gain(values, baseline) -> dict:
    """`values` minus `baseline`, pair by pair (same seed): mean, sample std, 95% CI of the mean, the
    two-sided paired t-test p-value against no difference, and the number of pairs."""
    diffs = np.asarray(values, dtype=float) - np.asarray(baseline, dtype=float)
    n = len(diffs)
    low, high = mean_ci(diffs)
    p = math.nan
    if n >= 2 and not no_spread(diffs.std(), diffs.mean()):  # with no spread the t statistic is undefined
        p = float(stats.ttest_rel(values, baseline).pvalue)
    return {
        "mean": float(diffs.mean()) if n else math.nan,
        "std": float(diffs.std(ddof=1)) if n >= 2 else math.nan,
        "ci95_low": low,
        "ci95_high": high,
        "p": p,
        "n_pairs": n,
    }
