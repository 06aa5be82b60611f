"""What a method is: one small class owning its run-key settings, how it applies and is removed
exactly, where it draws, and what an image costs. The registry is crdiff.experiment.methods.

A method is bound to one run (`Method(run)`) and applied to a dense pipeline for one resolution at a
time; `remove` is a class method, so a pipeline is brought back to dense without knowing which
method changed it (every registered method's `remove` is a no-op on a pipeline it did not change).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from crdiff.amplify import CRDiffConfig
from crdiff.models import MODELS, Resolution
from crdiff.native import NativeRule


class Method:
    """`dense`: the pipeline as loaded. Subclasses override what their method changes."""

    name: ClassVar[str] = "dense"

    def __init__(self, run) -> None:
        self.run = run

    def settings(self, resolution: Resolution | None = None) -> dict[str, Any]:
        """Everything this method reads from the run besides model, sampler and prompts (its run key)."""
        return {}

    def pruning(self, resolution: Resolution | None = None) -> CRDiffConfig | None:
        """The CR-Diff settings behind a pruning-based method (None for the others)."""
        return None

    def sampler(self):
        """The sampler settings its images are drawn with (the run's, unless the method is a sampler change)."""
        return self.run.sampler

    def call_kwargs(self, resolution: Resolution) -> dict[str, Any]:
        """Extra arguments of the pipeline call (none: the pipeline's defaults)."""
        return {}

    def unsupported(self) -> str | None:
        """Why the run's model is one this method does not apply to (None: it applies)."""
        return None

    def check(self) -> None:
        """Refuse, before any model loads, a run this method does not apply to."""
        why = self.unsupported()
        if why:
            raise ValueError(f"method {self.name!r} {why}; drop it from methods, or list it in "
                             "methods_if_supported to leave it out on models it does not support")

    def apply(self, pipe, resolution: Resolution) -> None:
        """Put the dense `pipe` in this method for images of `resolution`."""

    @classmethod
    def remove(cls, pipe) -> None:
        """Undo `apply` exactly; a no-op on a pipeline this method did not change."""

    def drawing_rule(self) -> NativeRule | None:
        """The bucket rule of a method that draws at another size than the target (None: at the target)."""
        return None

    def branches(self, resolution: Resolution | None = None) -> int:
        """Denoiser evaluations per sample and step: 2 for POA (dense and pruned), else 1."""
        crd = self.pruning(resolution)
        return 1 if crd is None or crd.k in (0.0, 1.0) else 2

    def passes(self, resolution: Resolution | None = None) -> int:
        """Its cost per image: denoiser passes per guidance half (classifier-free guidance doubles it)."""
        return self.sampler().steps * self.branches(resolution)

    def cost_class(self, resolution: Resolution | None = None) -> str:
        """Which row of results/bench/throughput.csv times it: `dense` (one evaluation per step),
        `crdiff` (two, one batched call) or `crdiff_sequential`."""
        if self.branches(resolution) == 1:
            return "dense"
        return "crdiff" if self.pruning(resolution).batched else "crdiff_sequential"


def train_resolution(run) -> Resolution:
    """The model's training resolution (the registry's, else the first `resolutions.default`)."""
    if run.model.name in MODELS:
        return MODELS[run.model.name].resolution
    return Resolution.parse(run.resolutions.default[0])


def unet_of(pipe, method: str):
    """The pipeline's UNet, or one clear error for a UNet-only method on a DiT pipeline."""
    if getattr(pipe, "unet", None) is None:
        raise ValueError(f"method {method!r} is defined for UNet pipelines; {type(pipe).__name__} has none")
    return pipe.unet


def replace_sampler(run, **changes):
    """The run's sampler settings with `changes` (a method that changes how it samples, e.g. steps)."""
    return dataclasses.replace(run.sampler, **changes)
