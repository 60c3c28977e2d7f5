"""Uncertainty of a sweep's numbers: the 95% confidence interval of a mean over seeds, and the gain of a
point over its alpha=1 baseline paired by seed with the paired t-test (scipy.stats).

Both assume the seeds' values are independent draws from a roughly normal distribution; with fewer than
two values there is no spread to estimate, so everything but the mean is NaN (an empty CSV cell).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

LEVEL = 0.95


def mean_ci(values) -> tuple[float, float]:
    """The Student-t 95% confidence interval of the mean of `values` (NaN, NaN when fewer than two)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return math.nan, math.nan
    mean, sem = float(values.mean()), float(stats.sem(values))
    if sem == 0:  # all values equal: no spread, the interval is the value (scipy cannot scale by zero)
        return mean, mean
    low, high = stats.t.interval(LEVEL, len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def paired_gain(values, baseline) -> dict:
    """`values` minus `baseline`, pair by pair (same seed): mean, sample std, 95% CI of the mean, the
    two-sided paired t-test p-value against no difference, and the number of pairs."""
    diffs = np.asarray(values, dtype=float) - np.asarray(baseline, dtype=float)
    n = len(diffs)
    low, high = mean_ci(diffs)
    p = math.nan
    if n >= 2 and diffs.std() > 0:  # with no spread the t statistic is undefined
        p = float(stats.ttest_rel(values, baseline).pvalue)
    return {
        "mean": float(diffs.mean()) if n else math.nan,
        "std": float(diffs.std(ddof=1)) if n >= 2 else math.nan,
        "ci95_low": low,
        "ci95_high": high,
        "p": p,
        "n_pairs": n,
    }
