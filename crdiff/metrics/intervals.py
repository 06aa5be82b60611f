"""Uncertainty of a score from its per-image values: 95% bootstrap intervals over prompts, paired gains,
McNemar's exact test (scipy does the statistics).

The prompts are the resampling unit: a resample draws n prompt indices with replacement and recomputes
the statistic on those prompts (for every seed set of a cell at once, and for dense and a method at once
when the statistic is a paired gain: the same prompts and seeds resampled together). Intervals are
percentile intervals (scipy.stats.bootstrap, method="percentile"): BCa would need a jackknife of n
recomputations, too costly for FID. A resample of FID / KID draws some images twice, which raises the
distance a little: their intervals sit partly above the point value; the paired gain, where both sides
carry the same duplicates, is the one to read.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

RESAMPLES = 1000  # per-image means: about 1 ms per resample of 5,000 prompts
FEATURE_RESAMPLES = 50  # FID / KID: each resample recomputes the distance (seconds on a CPU at 5,000 images)
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
