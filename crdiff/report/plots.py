"""Figures from cell lines (crdiff.report.tables.aggregate of selected rows: one run per cell): each metric
vs resolution per model, and each metric vs k for sweeps; error bars are the cells' 95% intervals."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from crdiff.report.tables import METRICS


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _errorbar(ax, x, group: pd.DataFrame, metric: str, **style) -> None:
    """A line with the cells' 95% intervals as error bars where they have one."""
    lo, hi = f"{metric}_lo", f"{metric}_hi"
    if lo in group and group[lo].notna().all():
        # clipped at 0: an interval read from rows written before the jackknife may lie above its value
        yerr = [(group[metric] - group[lo]).clip(lower=0), (group[hi] - group[metric]).clip(lower=0)]
        ax.errorbar(x, group[metric], yerr=yerr, marker="o", capsize=3, **style)
    else:
        ax.plot(x, group[metric], marker="o", **style)


def metric_vs_resolution(rows: pd.DataFrame, model: str, out: str | Path,
                         methods: tuple[str, ...] = ("dense", "crdiff"), name: str | None = None) -> Path | None:
    """One panel per metric: `methods` (dense and CR-Diff) across the model's resolutions (by pixel count),
    written to `name` (default <model>_metrics_vs_resolution.png) under `out`."""
    data = rows[(rows.model == model) & rows.method.isin(methods)]
    metrics = [m for m in METRICS if m in data.columns and data[m].notna().any()]
    if data.empty or not metrics:
        return None
    plt = _pyplot()
    # by pixel count, ties (24x32, 32x24) by height: every method's line visits the sizes in one order
    data = data.assign(pixels=data.height * data.width).sort_values(["pixels", "height", "width"], kind="stable")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for method, group in data.groupby("method", sort=False, observed=True):
            _errorbar(ax, group.resolution, group, metric, label="CR-Diff" if method == "crdiff" else method)
        ax.set_title(METRICS[metric][0])
        ax.tick_params(axis="x", rotation=45)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{model}: metrics vs resolution (HxW)")
    fig.tight_layout()
    path = Path(out) / (name or f"{model}_metrics_vs_resolution.png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def metric_vs_k(rows: pd.DataFrame, model: str, out: str | Path) -> Path | None:
    """One panel per metric: CR-Diff across k, one line per resolution (a k sweep); dense as k = 0."""
    data = rows[rows.model == model].copy()
    data.loc[data.method == "dense", "k"] = 0.0
    data = data[data.method.isin(["dense", "crdiff"])].dropna(subset=["k"])
    metrics = [m for m in METRICS if m in data.columns and data[m].notna().any()]
    if data.k.nunique() < 3 or not metrics:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for resolution, group in data.groupby("resolution", sort=False):
            group = group.sort_values("k")
            _errorbar(ax, group.k, group, metric, label=resolution)
        ax.set_title(METRICS[metric][0])
        ax.set_xlabel("k")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{model}: metrics vs k (k = 0 is dense)")
    fig.tight_layout()
    path = Path(out) / f"{model}_metrics_vs_k.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
