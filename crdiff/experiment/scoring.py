"""The runner's metric stage: every rank scores its share of each job's images; values sync once."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

from crdiff.experiment.config import MetricsConfig
from crdiff.metrics import ImageMetric, build_metric, preprocess
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
    """Real-image statistics: from the cache (rank 0 holds them, other ranks empty states), else
    computed over this rank's share `indices` of `prompts.image_paths` and cached from the synced
    states by rank 0. `everywhere(found)`: whether every rank found the cache (node-local caches may
    differ; then all ranks recompute, so the synced statistics count the reference exactly once)."""
    cache = metric.cache_file(cache_dir() / "reference", f"{prompts.reference_digest()}-{cfg.preprocessing}")
    if everywhere(cache.exists()):
        metric.load_reference(cache, share=is_main)
        return
    paths = [prompts.image_paths[i] for i in indices]
    for images, _ in _batches(paths, [""] * len(paths), cfg.batch_size, cfg.preprocessing):
        metric.update_reference(images)
    metric.pending_cache = cache  # written after the synced compute, see score_job


def score_job(metrics: dict[str, ImageMetric], cfg: MetricsConfig, prompts: PromptSet, folder: Path,
              indices: list[int], is_main: bool, world: int, reference: list[int] | None = None,
              everywhere: Callable[[bool], bool] = bool) -> dict[str, float]:
    """Scores of one job's images; every rank calls this with its own `indices` (a disjoint share of
    the prompts) and `reference` (its share of the reference images; default: `indices`);
    `everywhere`: see `load_reference`."""
    values = {}
    for name, metric in metrics.items():
        metric.reset()
        if name == "kid":  # subsets cannot be larger than the image sets
            metric.metric.subset_size = min(cfg.kid_subset_size, len(prompts))
        if metric.needs_reference:
            load_reference(metric, cfg, prompts, indices if reference is None else reference, is_main, everywhere)
        paths = [str(image_path(folder, i)) for i in indices]
        for images, texts in _batches(paths, [prompts.prompts[i] for i in indices], cfg.batch_size,
                                      cfg.preprocessing):
            metric.update(images, texts)
        values[name] = metric.compute()
        cache = getattr(metric, "pending_cache", None)
        if cache is not None:
            with metric.synced(world > 1):
                if is_main:
                    metric.save_reference(cache)
            metric.pending_cache = None
    return values
