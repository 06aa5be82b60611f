"""The metric interface and the mean-of-per-image-scores reduction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from PIL import Image
from torchmetrics import MeanMetric


class MetricUnavailableError(RuntimeError):
    """A scorer's weights are not on this machine (and may not be downloaded now)."""


def unavailable(what: str, err: Exception) -> MetricUnavailableError:
    return MetricUnavailableError(
        f"{what} could not be loaded ({err.__class__.__name__}). Fetch every weight an experiment needs "
        "once where the internet is reachable: `python scripts/prefetch_weights.py experiment=<name>`, "
        "then run with HF_HUB_OFFLINE=1."
    )


@contextmanager
def states_on_cpu(metric) -> Iterator[None]:
    """Hold a torchmetrics metric's states on the CPU while it syncs (compute, sync_context).

    torchmetrics syncs states on the device they live on, and crdiff's one process group is gloo
    (CPU tensors, see crdiff.experiment.distributed): states on a GPU move to the CPU for the sync
    and back after it, so `update` keeps running on the GPU.
    """
    device = metric.device
    _move_states(metric, torch.device("cpu"))
    try:
        yield
    finally:
        _move_states(metric, device)


def _move_states(metric, device: torch.device) -> None:
    for name in metric._defaults:
        value = getattr(metric, name)
        setattr(metric, name, [v.to(device) for v in value] if isinstance(value, list) else value.to(device))


class ImageMetric:
    """update() with preprocessed PIL images and their prompts; compute() -> float over all ranks."""

    name: str = ""
    higher_is_better: bool = True
    needs_reference: bool = False

    @classmethod
    def needs(cls, **options) -> list:
        """The `crdiff.weights.Requirement`s the real scorer built with `options` loads (checked
        before a run, fetched by scripts/prefetch_weights.py)."""
        raise NotImplementedError

    def update(self, images: list[Image.Image], prompts: list[str]) -> None:
        raise NotImplementedError

    def update_reference(self, images: list[Image.Image]) -> None:
        raise TypeError(f"{self.name} takes no reference images")

    def compute(self) -> float:
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


class MeanScore(ImageMetric):
    """Mean of a per-image score; subclasses implement `score(images, prompts) -> Tensor[B]`."""

    def __init__(self) -> None:
        self.mean = MeanMetric().set_dtype(torch.float64)  # stays on the CPU: synced through gloo

    @torch.no_grad()
    def update(self, images: list[Image.Image], prompts: list[str]) -> None:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if images:
            self.mean.update(self.score(images, prompts).double().cpu())

    def score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def compute(self) -> float:
        return float(self.mean.compute())

    def reset(self) -> None:
        self.mean.reset()
