"""Uncertainty of a score from its per-image values: 95% bootstrap intervals over prompts, paired gains,
McNemar's exact test (scipy does the statistics).

The prompts are the resampling unit: a resample draws n prompt indices with replacement and recomputes
the statistic on those prompts (for every seed set of a cell at once, and for dense and a method at once
when the statistic is a paired gain: the same prompts and seeds resampled together). Means get percentile
intervals (scipy.stats.bootstrap, method="percentile").

FID / KID get a delete-a-group jackknife instead (`jackknife`): a bootstrap resample repeats images, which
shrinks the effective sample and raises the distance's small-sample bias, so a percentile interval of FID
sat above its own value (digits: 41.8 [60.7, 147.3]). The jackknife leaves out one of G groups of
prompts at a time (no image repeated; each recomputation sees (G-1)/G of the images), estimates the
standard error from the spread of the G values and centres a t interval on the estimate itself:
se = sqrt((G-1)/G * sum_i (theta_i - mean)^2), theta_hat +- t(0.975, G-1) * se. It costs G
recomputations of the distance (20 by default, against 50 bootstrap resamples before) and measures the
estimate's sampling spread at this sample size; it does not remove FID's small-sample bias, which the
real-vs-real floor at the same size shows (scripts/interval_coverage.py measures its coverage).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

RESAMPLES = 1000  # per-image means: about 1 ms per resample of 5,000 prompts
FEATURE_GROUPS = 20  # FID / KID: delete-a-group jackknife, one recomputation of the distance per group
FEATURE_METHOD = "delete-a-group jackknife over prompts, t interval"  # recorded in every row's `intervals`
# KID's leave-outs, recorded beside it: the full run's random subsets less the images left out (rows scored
# before drew new subsets per leave-out, which widened the interval; their KID intervals are redone)
KID_LEAVE_OUT = "subsets kept, left-out images dropped"
SEED = 0
LEVEL = 0.95


def interval(statistic: Callable[[np.ndarray], float], n: int, resamples: int = RESAMPLES,
             seed: int = SEED) -> list[float] | None:
    """95% percentile interval of `statistic(prompt indices)` over `resamples` bootstrap draws of n prompts;
    None when there is nothing to resample (fewer than 2 prompts, or no resamples asked)."""
    if n < 2 or resamples < 1:
        return None
    result = stats.bootstrap((np.arange(n),), statistic, n_resamples=resamples, vectorized=False,
                             method="percentile", confidence_level=LEVEL, random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return [float(low), float(high)]


def groups(n: int, count: int = FEATURE_GROUPS, seed: int = SEED) -> list[np.ndarray]:
    """The jackknife's `count` groups of prompt indices 0..n-1: a seeded permutation split as evenly as
    possible (at most n groups), so a cell's seed sets and both sides of a gain leave out the same prompts."""
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(g) for g in np.array_split(order, min(count, n))]


def jackknife(statistic: Callable[[np.ndarray], float], n: int, count: int = FEATURE_GROUPS,
              seed: int = SEED) -> list[float] | None:
    """95% delete-a-group jackknife interval of `statistic(prompt indices)` over n prompts, centred on
    statistic(all); None when there is nothing to leave out (fewer than 2 prompts or groups) or a
    leave-out is not finite (two images: one left, no covariance)."""
    if n < 2 or count < 2:
        return None
    value = statistic(np.arange(n))
    parts = groups(n, count, seed)
    left_out = np.array([statistic(np.setdiff1d(np.arange(n), g)) for g in parts], dtype=np.float64)
    if not np.all(np.isfinite(left_out)) or not np.isfinite(value):  # e.g. one image left: no covariance
        return None
    g = len(parts)
    se = float(np.sqrt((g - 1) / g * np.sum((left_out - left_out.mean()) ** 2)))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, g - 1)) * se
    return [value - half, value + half]


def stale(settings: dict | None, metric: str) -> bool:
    """Whether a row's stored FID / KID-like interval of `metric` (its `intervals` settings) was computed by
    another scheme than today's: before the jackknife, or KID with redrawn subsets."""
    settings = settings if isinstance(settings, dict) else {}
    if settings.get("feature_method") != FEATURE_METHOD:
        return True
    return metric == "kid" and settings.get("kid_leave_out") != KID_LEAVE_OUT


def mean_interval(values: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> list[float] | None:
    """Interval of the mean of per-prompt `values` (shape [n], or [seed sets, n]: the seed sets' mean
    per prompt is resampled). Vectorised: cheap at any n."""
    values = np.asarray(values, dtype=np.float64)
    per_prompt = values.mean(0) if values.ndim == 2 else values
    if len(per_prompt) < 2 or resamples < 1:
        return None
    if np.all(per_prompt == per_prompt[0]):  # no spread to resample: the interval is the value itself
        return [float(per_prompt[0])] * 2
    result = stats.bootstrap((per_prompt,), np.mean, n_resamples=resamples, method="percentile",
                             confidence_level=LEVEL, random_state=np.random.default_rng(seed))
    low, high = result.confidence_interval
    return [float(low), float(high)]


def mcnemar(dense: np.ndarray, method: np.ndarray) -> dict[str, float]:
    """McNemar's exact test of paired binary outcomes (1 = correct): a two-sided binomial test of the
    discordant pairs. Returns the counts only dense / only the method got right and the p-value."""
    dense, method = np.asarray(dense, dtype=bool), np.asarray(method, dtype=bool)
    if dense.shape != method.shape:
        raise ValueError(f"paired outcomes need the same images: {dense.shape} vs {method.shape}")
    only_dense, only_method = int((dense & ~method).sum()), int((~dense & method).sum())
    discordant = only_dense + only_method
    p = 1.0 if discordant == 0 else float(stats.binomtest(only_method, discordant, 0.5).pvalue)
    return {"only_dense": only_dense, "only_method": only_method, "p": p}
