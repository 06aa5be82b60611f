"""The metric interface; every score is kept per image (index-sorted, the same for any rank count)."""

from __future__ import annotations

import torch
from PIL import Image
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


class MetricUnavailableError(RuntimeError):
    """A scorer's weights are not on this machine (and may not be downloaded now)."""


def unavailable(what: str, err: Exception) -> MetricUnavailableError:
    return MetricUnavailableError(
        f"{what} could not be loaded ({err.__class__.__name__}). Fetch every weight an experiment needs "
        "once where the internet is reachable: `python scripts/prefetch_weights.py experiment=<name>`, "
        "then run with HF_HUB_OFFLINE=1."
    )


class PerImage(Metric):
    """Per-image values keyed by image index, gathered over ranks (torchmetrics' cat reduction through
    the gloo group) and returned sorted by index, so neither rank count nor batch order shows."""

    full_state_update = False

    def _wrap_compute(self, compute):
        wrapped = super()._wrap_compute(compute)

        def one_row_per_image(*args, **kwargs):  # torchmetrics squeezes a one-image result to 0-d
            index, value = wrapped(*args, **kwargs)
            index = index.reshape(-1)
            return index, value.reshape(len(index), *value.shape[1:]) if value.ndim else value.reshape(1)

        return one_row_per_image

    def __init__(self) -> None:
        super().__init__()
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("value", default=[], dist_reduce_fx="cat")

    def update(self, index: torch.Tensor, value: torch.Tensor) -> None:
        self.index.append(index.long().cpu())
        self.value.append(value.detach().double().cpu())

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(self.index, list) and not self.index:  # after a sync the states are tensors
            return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
        index, value = dim_zero_cat(self.index), dim_zero_cat(self.value)
        order = torch.argsort(index)
        return index[order], value[order]


class ImageMetric:
    """update() with preprocessed PIL images, their prompts and image indices; compute() -> float over
    all ranks; per_image() -> what each image contributed (scores, or features for FID / KID)."""

    name: str = ""
    higher_is_better: bool = True
    needs_reference: bool = False

    @classmethod
    def needs(cls, **options) -> list:
        """The `crdiff.weights.Requirement`s the real scorer built with `options` loads (checked
        before a run, fetched by scripts/prefetch_weights.py)."""
        raise NotImplementedError

    def update(self, images: list[Image.Image], prompts: list[str], indices: list[int] | None = None) -> None:
        raise NotImplementedError

    def update_reference(self, images: list[Image.Image]) -> None:
        raise TypeError(f"{self.name} takes no reference images")

    def compute(self) -> float:
        raise NotImplementedError

    def per_image(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(image indices, values) over all ranks, sorted by index."""
        raise NotImplementedError

    def reset(self) -> None:
        raise NotImplementedError


def _indices(metric, n: int, indices: list[int] | None) -> torch.Tensor:
    """The images' indices; without them, numbered on from the last update (one process)."""
    if indices is None:
        start = getattr(metric, "_next", 0)
        indices = list(range(start, start + n))
    if len(indices) != n:
        raise ValueError(f"{n} images but {len(indices)} indices")
    metric._next = max(indices, default=-1) + 1
    return torch.tensor(indices, dtype=torch.long)


class MeanScore(ImageMetric):
    """Mean of a per-image score; subclasses implement `score(images, prompts) -> Tensor[B]`."""

    def __init__(self) -> None:
        self.scores = PerImage()  # stays on the CPU: synced through gloo

    @torch.no_grad()
    def update(self, images: list[Image.Image], prompts: list[str], indices: list[int] | None = None) -> None:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        if images:
            self.scores.update(_indices(self, len(images), indices), self.score(images, prompts))

    def score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def per_image(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scores.compute()

    def compute(self) -> float:
        return float(self.per_image()[1].mean())

    def reset(self) -> None:
        self.scores.reset()
        self._next = 0
