"""The runner's metric stage: every rank scores its share of each job's images; per-image values are
gathered once, rank 0 computes the intervals and writes the per-image scores beside the result rows."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from PIL import Image

from crdiff import atomic
from crdiff.experiment.config import MetricsConfig
from crdiff.metrics import ImageMetric, build_metric, intervals, preprocess
from crdiff.models import cache_dir
from crdiff.experiment.prompts import PromptSet
from crdiff.experiment.sampling import image_path

log = logging.getLogger(__name__)


def metric_options(cfg: MetricsConfig, name: str) -> dict:
    """The settings of `cfg` that metric `name` is built with (the stand-in CLIP has its own architecture)."""
    options = {"clip": {"arch": cfg.clip_arch, "pretrained": cfg.clip_pretrained},
               "kid": {"subset_size": cfg.kid_subset_size}}
    return {} if cfg.tiny and name == "clip" else options.get(name, {})


def build_all(cfg: MetricsConfig, device: str) -> dict[str, ImageMetric]:
    """Instantiate every configured metric once (models load here, before any scoring)."""
    return {name: build_metric(name, tiny=cfg.tiny, device=device, **metric_options(cfg, name)) for name in cfg.names}


def _batches(paths: list[str], prompts: list[str], size: int, mode: str) -> Iterator[tuple[list, list]]:
    for start in range(0, len(paths), size):
        images = []
        for path in paths[start : start + size]:
            with Image.open(path) as im:
                images.append(preprocess(im, mode))
        yield images, prompts[start : start + size]


def load_reference(metric: ImageMetric, cfg: MetricsConfig, prompts: PromptSet, indices: list[int],
                   is_main: bool, everywhere: Callable[[bool], bool] = bool) -> None:
    """Real-image features: from the cache (rank 0 holds them, other ranks none), else computed over
    this rank's share `indices` of `prompts.image_paths` and cached from the gathered features by rank 0.
    `everywhere(found)`: whether every rank found the cache (node-local caches may differ; then all
    ranks recompute, so the gathered features count the reference exactly once)."""
    cache = metric.cache_file(cache_dir() / "reference", f"{prompts.reference_digest()}-{cfg.preprocessing}")
    if everywhere(cache.exists()):
        metric.load_reference(cache, share=is_main)
        return
    paths = [prompts.image_paths[i] for i in indices]
    for start, (images, _) in zip(range(0, len(paths), cfg.batch_size),
                                  _batches(paths, [""] * len(paths), cfg.batch_size, cfg.preprocessing)):
        metric.update_reference(images, indices[start : start + len(images)])
    metric.pending_cache = cache  # written after the gathering compute, see score_job


@dataclass
class JobScores:
    """One job's scores: the values, and on rank 0 their 95% intervals and what each image contributed
    (`per_image`: metric -> values in image order; `features`: FID / KID-like metric -> generated
    images' features, `reference`: -> the reference's)."""

    values: dict[str, float]
    ci95: dict[str, list[float] | None] = field(default_factory=dict)
    per_image: dict[str, np.ndarray] = field(default_factory=dict)
    features: dict[str, np.ndarray] = field(default_factory=dict)
    reference: dict[str, np.ndarray] = field(default_factory=dict)


def feature_interval(metric: ImageMetric, reference: torch.Tensor, features: torch.Tensor, cfg: MetricsConfig,
                     device: str) -> list[float] | None:
    """95% delete-a-group jackknife interval of FID / KID over the generated images (the reference stays
    fixed), computed on `device` (a GPU where there is one: each group is a covariance and an eigen-solve)."""
    from crdiff.metrics.fid import on_kept

    reference, features = reference.to(device), features.to(device)
    return _floor(metric.name, intervals.jackknife(
        lambda idx: on_kept(metric.name, metric.value, reference, features, idx),
        len(features), cfg.feature_groups, cfg.interval_seed))


def _floor(name: str, ci: list[float] | None) -> list[float] | None:
    """A Fréchet distance's interval clipped at 0, the least it can be (KID's unbiased estimate can be < 0)."""
    return ci if ci is None or name == "kid" else [max(ci[0], 0.0), ci[1]]


def distance(name: str, kid_subsets: int, kid_subset_size: int) -> Callable:
    """The function (reference, generated features) -> value of the FID / KID-like metric `name`
    (the scene / digit Fréchet distances are FIDs on other features)."""
    from crdiff.metrics.fid import frechet, kernel_distance

    if name == "kid":
        return lambda real, fake, keep=None: kernel_distance(real, fake, kid_subsets, kid_subset_size, keep=keep)
    return frechet


def kept_feature_interval(name: str, features: Path, reference: Path, cfg: MetricsConfig,
                          n_prompts: int) -> list[float] | None:
    """The jackknife interval of a stored row's FID / KID from its kept feature files (no image redrawn)."""
    from crdiff.metrics.fid import KID_SUBSETS, on_kept

    fake, real = (torch.from_numpy(np.load(f)).double() for f in (features, reference))
    value = distance(name, KID_SUBSETS, min(cfg.kid_subset_size, n_prompts))
    return _floor(name, intervals.jackknife(lambda idx: on_kept(name, value, real, fake, idx), len(fake),
                                            cfg.feature_groups, cfg.interval_seed))


def score_job(metrics: dict[str, ImageMetric], cfg: MetricsConfig, prompts: PromptSet, folder: Path,
              indices: list[int], is_main: bool, world: int, reference: list[int] | None = None,
              everywhere: Callable[[bool], bool] = bool, device: str = "cpu") -> JobScores:
    """Scores of one job's images; every rank calls this with its own `indices` (a disjoint share of
    the prompts) and `reference` (its share of the reference images; default: `indices`);
    `everywhere`: see `load_reference`. Intervals and per-image values come back on rank 0 only."""
    result = JobScores({})
    for name, metric in metrics.items():
        metric.reset()
        if name == "kid":  # subsets cannot be larger than the image sets
            metric.subset_size = min(cfg.kid_subset_size, len(prompts))
        if metric.needs_reference:
            load_reference(metric, cfg, prompts, indices if reference is None else reference, is_main, everywhere)
        paths = [str(image_path(folder, i)) for i in indices]
        for start, (images, texts) in zip(range(0, len(paths), cfg.batch_size),
                                          _batches(paths, [prompts.prompts[i] for i in indices], cfg.batch_size,
                                                   cfg.preprocessing)):
            metric.update(images, texts, indices[start : start + len(images)])
        # collectives, on every rank in the same order: gather the per-image values (and the reference)
        index, values = metric.per_image()
        result.values[name] = metric.compute()  # from the gathered values (torchmetrics caches them)
        cache = getattr(metric, "pending_cache", None)
        if cache is not None:
            if is_main:
                metric.save_reference(cache)
            metric.pending_cache = None
        if not is_main:
            continue
        if len(index) != len(prompts) or not torch.equal(index, torch.arange(len(prompts))):
            raise RuntimeError(f"{name}: scored images {index.tolist()[:8]}... are not the prompts 0..{len(prompts) - 1}")
        if metric.needs_reference:
            result.features[name], result.reference[name] = values.numpy(), metric.reference().numpy()
            result.ci95[name] = feature_interval(metric, metric.reference(), values, cfg, device)
        else:
            result.per_image[name] = values.numpy()
            result.ci95[name] = intervals.mean_interval(values.numpy(), cfg.resamples, cfg.interval_seed)
    return result


def _stored(array: np.ndarray) -> np.ndarray:
    """float32 when that loses nothing (Inception's features are float32), to halve the files."""
    return array.astype(np.float32) if np.array_equal(array.astype(np.float32), array) else array


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
        np.save(f, array)


def write_scores(out: Path, key: str, prompts: PromptSet, seed: int, scores: JobScores,
                 feature_names: dict[str, str]) -> dict:
    """`<out>/scores/<key>.csv` (index, prompt, seed, one column per per-image metric) and the features
    of FID / KID-like metrics as `.npy` (one file per feature extractor); returns the files, relative to `out`."""
    import pandas as pd

    folder = Path(out) / "scores"
    folder.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"index": range(len(prompts)), "prompt": prompts.prompts,
                          "seed": [seed + i for i in range(len(prompts))], **scores.per_image})
    atomic.write_bytes(folder / f"{key}.csv", table.to_csv(index=False).encode())
    files = {"per_image": f"scores/{key}.csv", "features": {}, "reference": {}}
    for name, features in scores.features.items():
        feature = feature_names[name]
        for kind, array, stem in (("features", features, f"{key}.features-{feature}"),
                                  ("reference", scores.reference[name],
                                   f"reference-{feature}-{prompts.reference_digest()}")):
            path = folder / f"{stem}.npy"
            if not path.exists():  # FID and KID on one extractor share the file
                atomic.write_with(path, lambda tmp, a=array: _save(tmp, _stored(a)))
            files[kind][name] = f"scores/{stem}.npy"
    return files
