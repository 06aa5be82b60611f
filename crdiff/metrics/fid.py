"""FID and KID on torchmetrics' feature extractors, from per-image features (kept for resampling);
the real images' features are cached per (reference, preprocessing)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from crdiff import atomic
from crdiff.metrics.base import ImageMetric, PerImage, _indices, unavailable
from crdiff.weights import UrlFile, torch_hub


def to_uint8(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2)


KID_SUBSETS = 100  # torchmetrics' default number of random subsets


def frechet(real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID of two feature sets (rows = images), in float64 as torchmetrics computes it; NaN, without calling
    LAPACK, where a side has fewer than two images (its covariance is undefined: MKL's eigensolver given
    NaN prints an error and can corrupt the heap)."""
    from torchmetrics.image.fid import _compute_fid

    if len(real) < 2 or len(fake) < 2:
        return float("nan")
    real, fake = real.double(), fake.double()
    return float(_compute_fid(real.mean(0), torch.cov(real.T), fake.mean(0), torch.cov(fake.T)))


def kernel_distance(real: torch.Tensor, fake: torch.Tensor, subsets: int, subset_size: int, seed: int = 0,
                    keep=None) -> float:
    """KID: the mean polynomial-kernel MMD over `subsets` random subsets of `subset_size` images each,
    drawn by a generator seeded `seed` from features in image-index order (so the subsets, and KID, do
    not depend on which rank scored which image). `keep` (generated image indices; a jackknife leave-out):
    the same draws as over all of `fake`, less the images not kept (each real subset shortened to match),
    so that leave-outs differ by the images left out, not by new random subsets."""
    from torchmetrics.image.kid import poly_mmd

    size = min(subset_size, len(real), len(fake))
    generator = torch.Generator().manual_seed(seed)
    kept = None
    if keep is not None:
        kept = torch.zeros(len(fake), dtype=torch.bool)
        kept[torch.as_tensor(keep, dtype=torch.long).cpu()] = True
    draws = []
    for _ in range(subsets):
        ours, theirs = torch.randperm(len(real), generator=generator)[:size], torch.randperm(len(fake), generator=generator)[:size]
        if kept is not None:
            theirs = theirs[kept[theirs]]
            ours = ours[: len(theirs)]
        if len(theirs) >= 2:  # an MMD needs two images a side
            draws.append(poly_mmd(real[ours.to(real.device)].double(), fake[theirs.to(fake.device)].double()))
    return float(torch.stack(draws).mean()) if draws else float("nan")


def on_kept(name: str, score, real: torch.Tensor, fake: torch.Tensor, keep) -> float:
    """`score(real, fake)` on the generated images `keep` only (a jackknife leave-out): KID keeps its
    random subsets (kernel_distance's `keep`), a Fréchet distance takes the kept rows."""
    if name == "kid":
        return score(real, fake, keep=keep)
    return score(real, fake[torch.as_tensor(keep, dtype=torch.long, device=fake.device)])


class _FeatureMetric(ImageMetric):
    """Shared by FID and KID: torchmetrics' feature extractor on uint8 images; the features of every
    generated image (and of the reference) are kept per image, so the value can be recomputed on any
    resample of the images; the reference's features are cached on disk."""

    higher_is_better = False
    needs_reference = True

    def __init__(self, metric, feature_name: str, device: str = "cpu") -> None:
        self.extractor, self.feature_name, self.device = metric.inception.to(device), feature_name, device
        self.real, self.fake = PerImage(), PerImage()

    @classmethod
    def needs(cls, **options) -> list:
        """torchmetrics builds torch-fidelity's Inception-v3, whose weights torch.hub keeps by file name."""
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

        path = torch_hub() / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[-1]
        return [UrlFile(f"metric {cls.name}: Inception-v3 (torch-fidelity)", URL_INCEPTION_V3, path)]

    @torch.no_grad()
    def features(self, images: list[Image.Image]) -> torch.Tensor:
        return self.extractor(to_uint8(images).to(self.device)).reshape(len(images), -1)

    def update(self, images: list[Image.Image], prompts: list[str], indices: list[int] | None = None) -> None:
        if images:
            self.fake.update(_indices(self, len(images), indices), self.features(images))

    def update_reference(self, images: list[Image.Image], indices: list[int] | None = None) -> None:
        if images:
            start = getattr(self, "_next_real", 0)
            indices = list(range(start, start + len(images))) if indices is None else indices
            self._next_real = max(indices) + 1
            self.real.update(torch.tensor(indices), self.features(images))

    def per_image(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(image indices, features) of the generated images over all ranks, sorted by index."""
        return self.fake.compute()

    def reference(self) -> torch.Tensor:
        return self.real.compute()[1]

    def value(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        raise NotImplementedError

    def compute(self) -> float:
        return self.value(self.reference(), self.per_image()[1])

    def reset(self) -> None:
        self.real.reset()
        self.fake.reset()
        self._next = self._next_real = 0

    def synced(self, sync: bool):
        """All ranks' reference features gathered inside the `with`; this rank's own after it."""
        return self.real.sync_context(should_sync=sync)

    def cache_file(self, cache_dir: Path, reference_key: str) -> Path:
        # "features": the cache holds the reference's per-image features (sums before metrics version 3)
        key = hashlib.sha256(json.dumps([self.name, self.feature_name, reference_key, "features"]).encode()
                             ).hexdigest()[:16]
        return Path(cache_dir) / f"{self.name}-real-{key}.pt"

    def save_reference(self, path: Path) -> None:
        index, features = self.real.compute()
        atomic.write_with(path, lambda tmp: torch.save({"index": index, "features": features}, tmp))  # another
        # rank or job may be reading it

    def load_reference(self, path: Path, share: bool = True) -> None:
        """Load cached reference features; `share=False` (ranks other than 0) loads none, so the
        cross-rank concatenation counts the reference exactly once."""
        self.real.reset()
        cached = torch.load(path, weights_only=True)
        if share:
            self.real.update(cached["index"], cached["features"])
        else:
            self.real.update(cached["index"][:0], cached["features"][:0])


class FID(_FeatureMetric):
    name = "fid"

    def __init__(self, feature: nn.Module | int = 2048, feature_name: str = "inception2048", device: str = "cpu"):
        from torchmetrics.image.fid import FrechetInceptionDistance

        try:
            metric = FrechetInceptionDistance(feature=feature)
        except Exception as err:  # noqa: BLE001 - the Inception weights download at construction
            raise unavailable("FID's Inception-v3 weights (torch-fidelity)", err) from None
        super().__init__(metric, feature_name, device)

    def value(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        return frechet(real, fake)


class KID(_FeatureMetric):
    name = "kid"

    def __init__(self, feature: nn.Module | int = 2048, feature_name: str = "inception2048", device: str = "cpu",
                 subsets: int = KID_SUBSETS, subset_size: int = 1000):
        from torchmetrics.image.kid import KernelInceptionDistance

        try:
            metric = KernelInceptionDistance(feature=feature, subsets=subsets, subset_size=subset_size)
        except Exception as err:  # noqa: BLE001
            raise unavailable("KID's Inception-v3 weights (torch-fidelity)", err) from None
        super().__init__(metric, feature_name, device)
        self.subsets, self.subset_size = subsets, subset_size

    def value(self, real: torch.Tensor, fake: torch.Tensor, keep=None) -> float:
        return kernel_distance(real, fake, self.subsets, self.subset_size, keep=keep)
