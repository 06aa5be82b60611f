"""FID and KID through torchmetrics, with the real images' features cached per (reference, preprocessing)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from crdiff import atomic
from crdiff.metrics.base import ImageMetric, states_on_cpu, unavailable
from crdiff.weights import UrlFile, torch_hub


def to_uint8(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2)


class _FeatureMetric(ImageMetric):
    """Shared by FID and KID: a torchmetrics metric on uint8 images, reference cached on disk."""

    higher_is_better = False
    needs_reference = True
    real_states: tuple[str, ...] = ()

    def __init__(self, metric, feature_name: str, device: str = "cpu") -> None:
        self.metric, self.feature_name, self.device = metric.to(device), feature_name, device

    @classmethod
    def needs(cls, **options) -> list:
        """torchmetrics builds torch-fidelity's Inception-v3, whose weights torch.hub keeps by file name."""
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        path = torch_hub() / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]
        return [UrlFile(f"metric {cls.name}: Inception-v3 (torch-fidelity)", URL_INCEPTION_V3, path)]

    def update(self, images: list[Image.Image], prompts: list[str]) -> None:
        if images:
            self.metric.update(to_uint8(images).to(self.device), real=False)

    def update_reference(self, images: list[Image.Image]) -> None:
        if images:
            self.metric.update(to_uint8(images).to(self.device), real=True)

    def compute(self) -> float:
        with torch.random.fork_rng(devices=[]), states_on_cpu(self.metric):  # KID's random subsets: the same
            torch.manual_seed(0)  # on every run and rank
            value = self.metric.compute()
        return float(value[0] if isinstance(value, tuple) else value)

    def reset(self) -> None:
        self.metric.reset()

    def synced(self, sync: bool):
        """All ranks' states gathered (on the CPU) inside the `with`; this rank's own after it."""
        return _synced(self.metric, sync)

    def cache_file(self, cache_dir: Path, reference_key: str) -> Path:
        key = hashlib.sha256(json.dumps([self.name, self.feature_name, reference_key]).encode()).hexdigest()[:16]
        return Path(cache_dir) / f"{self.name}-real-{key}.pt"

    def save_reference(self, path: Path) -> None:
        states = {s: getattr(self.metric, s) for s in self.real_states}
        states = {s: (torch.cat(v) if isinstance(v, list) else v).cpu() for s, v in states.items()}
        atomic.write_with(path, lambda tmp: torch.save(states, tmp))  # another rank or job may be reading it

    def load_reference(self, path: Path, share: bool = True) -> None:
        """Load cached real states; `share=False` (ranks other than 0) loads empty ones of the same
        shape, so the cross-rank sum / concatenation counts the reference exactly once."""
        for s, value in torch.load(path, weights_only=True).items():
            value = value.to(self.device) if share else (value[:0] if isinstance(getattr(self.metric, s), list)
                                                         else torch.zeros_like(value)).to(self.device)
            setattr(self.metric, s, [value] if isinstance(getattr(self.metric, s), list) else value)


@contextmanager
def _synced(metric, sync: bool) -> Iterator[None]:
    with states_on_cpu(metric), metric.sync_context(should_sync=sync):
        yield


class FID(_FeatureMetric):
    name = "fid"
    real_states = ("real_features_sum", "real_features_cov_sum", "real_features_num_samples")

    def __init__(self, feature: nn.Module | int = 2048, feature_name: str = "inception2048", device: str = "cpu"):
        from torchmetrics.image.fid import FrechetInceptionDistance

        try:
            metric = FrechetInceptionDistance(feature=feature)
        except Exception as err:  # noqa: BLE001 - the Inception weights download at construction
            raise unavailable("FID's Inception-v3 weights (torch-fidelity)", err) from None
        super().__init__(metric, feature_name, device)


class KID(_FeatureMetric):
    name = "kid"
    real_states = ("real_features",)

    def __init__(self, feature: nn.Module | int = 2048, feature_name: str = "inception2048", device: str = "cpu",
                 subsets: int = 100, subset_size: int = 1000):
        from torchmetrics.image.kid import KernelInceptionDistance

        try:
            metric = KernelInceptionDistance(feature=feature, subsets=subsets, subset_size=subset_size)
        except Exception as err:  # noqa: BLE001
            raise unavailable("KID's Inception-v3 weights (torch-fidelity)", err) from None
        super().__init__(metric, feature_name, device)
