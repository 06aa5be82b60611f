"""Table cells and gains from stored per-image scores: value, 95% interval, seed spread; paired gains.

A run (crdiff.report.select) is one cell's rows, one per seed set. A cell's value is the mean over its
seed sets of each set's value, its interval a bootstrap over prompts for per-image metrics (every seed
set resampled on the same prompts) and a delete-a-group jackknife over prompts for FID / KID
(crdiff.metrics.intervals), and with several seed sets the spread of the per-set values
(sample standard deviation) stands beside it. A gain is method minus dense on the same prompts and
seeds: per-image differences for per-image metrics, FID / KID recomputed with the same prompt groups
left out on both sides; accuracy-like metrics also get McNemar's exact test.

McNemar's test pools the pairs of every seed set. Its one assumption is independent pairs, and each pair
is its own image pair: image i of seed set s draws from seed s + i (one generator per image), so every
(prompt, seed) is a distinct, independent draw given the prompts. Under the null every discordant pair
is a fair coin whatever its prompt or seed set, so a test stratified by prompt (Mantel-Haenszel for
matched pairs) is this same pooled test; the inference is about these prompts, which the bootstrap
interval over prompts generalises. Seed sets that overlap (seed sets 0 and 50 over 100 prompts whose
texts repeat every 10) draw some (prompt, seed) twice: the same image, counted once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from crdiff.metrics import intervals
from crdiff.metrics.fid import on_kept
from crdiff.metrics.registry import BINARY_METRICS, REFERENCE_METRICS


@dataclass
class Estimate:
    value: float
    ci95: list[float] | None = None
    spread: float | None = None  # standard deviation over seed sets (None: one set)
    seeds: int = 1
    mcnemar: dict | None = None  # gains of accuracy-like metrics


def _ordered(run: pd.DataFrame) -> pd.DataFrame:
    return run.sort_values("seed") if "seed" in run else run


def _file(row, kind: str, metric: str | None = None) -> Path | None:
    files = getattr(row, "scores", None)
    files = files if isinstance(files, dict) else {}
    name = files.get(kind) if metric is None else files.get(kind, {}).get(metric)
    return None if name is None else Path(row.output_dir) / name


def _per_image_tables(run: pd.DataFrame, metric: str) -> list[pd.DataFrame] | None:
    """Each seed set's per-image table (in the run's order), or None if a row has no file or no `metric`."""
    tables = []
    for row in _ordered(run).itertuples():
        path = _file(row, "per_image")
        if path is None or not path.is_file():
            return None
        table = pd.read_csv(path)
        if metric not in table:
            return None
        tables.append(table)
    return tables


def per_image(run: pd.DataFrame, metric: str) -> np.ndarray | None:
    """[seed sets, prompts] per-image values of `metric`, or None if a row has no per-image file."""
    tables = _per_image_tables(run, metric)
    if tables is None:
        return None
    return np.stack([t.sort_values("index")[metric].to_numpy(np.float64) for t in tables])


def features(run: pd.DataFrame, metric: str) -> tuple[list[torch.Tensor], torch.Tensor] | None:
    """(generated features per seed set, reference features) of an FID / KID-like metric, or None."""
    generated, reference = [], None
    for row in _ordered(run).itertuples():
        paths = _file(row, "features", metric), _file(row, "reference", metric)
        if not all(p is not None and p.is_file() for p in paths):
            return None
        generated.append(torch.from_numpy(np.load(paths[0])).double())
        reference = torch.from_numpy(np.load(paths[1])).double()
    return generated, reference


def outcomes(run: pd.DataFrame, metric: str) -> pd.DataFrame | None:
    """(prompt, seed, `metric`) per distinct image of the run's seed sets (a (prompt, seed) drawn twice
    is one image), or None if a row has no per-image file."""
    tables = _per_image_tables(run, metric)
    if tables is None:
        return None
    tables = [t[["prompt", "seed", metric]] for t in tables]
    return pd.concat(tables).drop_duplicates(["prompt", "seed"])


def mcnemar(method: pd.DataFrame, dense: pd.DataFrame, metric: str) -> dict | None:
    """McNemar's exact test over the distinct images both runs drew, paired on (prompt, seed)."""
    ours, theirs = outcomes(method, metric), outcomes(dense, metric)
    if ours is None or theirs is None:
        return None
    pairs = theirs.merge(ours, on=["prompt", "seed"], suffixes=("_dense", "_method"))
    return intervals.mcnemar(pairs[f"{metric}_dense"].to_numpy(), pairs[f"{metric}_method"].to_numpy())


def distance(metric: str, run: pd.DataFrame):
    """The function (reference, generated features) -> value that scored `metric` in these rows."""
    from crdiff.experiment.scoring import distance as of_metric

    settings = run.iloc[0].get("intervals") if "intervals" in run else None
    settings = settings if isinstance(settings, dict) else {}
    return of_metric(metric, settings.get("kid_subsets", 100), settings.get("kid_subset_size", 1000))


def _stale(run: pd.DataFrame, metric: str) -> bool:
    """Whether the rows' stored interval of FID / KID-like `metric` was computed by an earlier scheme."""
    return intervals.stale(run.iloc[0].get("intervals") if "intervals" in run else None, metric)


def _spread(values: list[float]) -> float | None:
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def cell(run: pd.DataFrame, metric: str, resamples: int = intervals.RESAMPLES,
         feature_groups: int = intervals.FEATURE_GROUPS, seed: int = intervals.SEED,
         device: str = "cpu") -> Estimate | None:
    """One cell's estimate of `metric` over the run's seed sets (None where the rows lack it). FID / KID
    intervals are recomputed from the kept features (the jackknife, also for rows scored with an older
    scheme) unless the cell is one row already scored with it; a FID cell's lower end is clipped at 0."""
    if metric not in run or run[metric].isna().any():
        return None
    per_set = [float(v) for v in _ordered(run)[metric]]
    value = float(np.mean(per_set))
    stored = len(run) == 1 and (metric not in REFERENCE_METRICS or not _stale(run, metric))
    found = None if stored else features(run, metric) if metric in REFERENCE_METRICS else None
    if len(run) == 1 and found is None:  # its interval was computed when it was scored
        row = run.iloc[0]
        lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
        return Estimate(value, None if pd.isna(lo) or pd.isna(hi) else [float(lo), float(hi)])
    ci = None
    if found is not None:
        generated, reference = [g.to(device) for g in found[0]], found[1].to(device)
        score = distance(metric, run)
        ci = intervals.jackknife(lambda idx: float(np.mean([on_kept(metric, score, reference, g, idx)
                                                            for g in generated])),
                                 generated[0].shape[0], feature_groups, seed)
        if ci is not None and metric != "kid":  # a Fréchet distance is >= 0; KID's unbiased estimate is not
            ci[0] = max(ci[0], 0.0)
    elif metric not in REFERENCE_METRICS:
        values = per_image(run, metric)
        ci = None if values is None else intervals.mean_interval(values, resamples, seed)
    return Estimate(value, ci, _spread(per_set), len(run))


def gain(method: pd.DataFrame, dense: pd.DataFrame, metric: str, resamples: int = intervals.RESAMPLES,
         feature_groups: int = intervals.FEATURE_GROUPS, seed: int = intervals.SEED,
         device: str = "cpu") -> Estimate | None:
    """method - dense on `metric` with a paired interval (the same prompts and seed sets resampled on both
    sides) on the seed sets both have; None where either side lacks the metric or no seed set is shared."""
    if metric not in method or metric not in dense or method[metric].isna().any() or dense[metric].isna().any():
        return None
    if "seed" in method:  # paired only on the same prompts and seeds
        shared = set(method.seed) & set(dense.seed)
        method, dense = method[method.seed.isin(shared)], dense[dense.seed.isin(shared)]
        if not shared or ("prompts_digest" in method and set(method.prompts_digest) != set(dense.prompts_digest)):
            return None
    m_sets, d_sets = [float(v) for v in _ordered(method)[metric]], [float(v) for v in _ordered(dense)[metric]]
    value = float(np.mean(m_sets) - np.mean(d_sets))
    spread = _spread([a - b for a, b in zip(m_sets, d_sets)])
    if metric in REFERENCE_METRICS:
        ours, theirs = features(method, metric), features(dense, metric)
        if ours is None or theirs is None:
            return Estimate(value, None, spread, len(method))
        score, reference = distance(metric, method), ours[1].to(device)
        a, b = [g.to(device) for g in ours[0]], [g.to(device) for g in theirs[0]]
        ci = intervals.jackknife(lambda idx: float(np.mean([on_kept(metric, score, reference, x, idx)
                                                            - on_kept(metric, score, reference, y, idx)
                                                            for x, y in zip(a, b)])),
                                 a[0].shape[0], feature_groups, seed)  # the same groups left out on both sides
        return Estimate(value, ci, spread, len(method))
    ours, theirs = per_image(method, metric), per_image(dense, metric)
    if ours is None or theirs is None:
        return Estimate(value, None, spread, len(method))
    test = mcnemar(method, dense, metric) if metric in BINARY_METRICS else None
    return Estimate(value, intervals.mean_interval(ours - theirs, resamples, seed), spread, len(method), test)
