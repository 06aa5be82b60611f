"""Controls: dense itself, changed in one way that could explain CR-Diff's gain without pruning.

dense_steps2x    dense with twice `sampler.steps`: CR-Diff's denoiser passes per image (two per step)
dense_cfg<s>     dense at guidance scale s (e.g. `dense_cfg5`, `dense_cfg12.5`): POA extrapolates from a
                 weaker model, as autoguidance does, so a stronger or weaker CFG is its nearest control
dense_sizecond   SDXL with its `original_size` / `target_size` micro-conditioning set to the training size
                 (the pipeline's own knob): the model is told it draws a training-size image
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from crdiff.experiment.methods.base import Method, replace_sampler, train_resolution
from crdiff.models import Resolution

SIZE_CONDITIONED = ("sdxl", "tiny-sdxl")  # the registry's models with SDXL's size micro-conditioning


class DenseSteps2x(Method):
    """Dense with twice the steps: as many denoiser passes per image as CR-Diff."""

    name = "dense_steps2x"

    def sampler(self):
        return replace_sampler(self.run, steps=2 * self.run.sampler.steps)


class DenseGuidance(Method):
    """Dense at guidance scale `scale`, read from the method's name (`dense_cfg<scale>`)."""

    name = "dense_cfg"  # a family: the registry takes any `dense_cfg<scale>`

    def __init__(self, run, scale: float) -> None:
        super().__init__(run)
        self.scale = scale

    @classmethod
    def parse(cls, run, name: str) -> DenseGuidance:
        try:
            scale = float(name.removeprefix(cls.name))
        except ValueError:
            scale = math.nan
        if not math.isfinite(scale) or scale < 0:
            raise ValueError(f"method {name!r}: {cls.name}<scale> needs a guidance scale >= 0, e.g. {cls.name}5")
        return cls(run, scale)

    def sampler(self):
        return replace_sampler(self.run, guidance=self.scale)


class DenseSizeCond(Method):
    """SDXL told (by `original_size` and `target_size`) that it draws at its training size."""

    name = "dense_sizecond"

    def unsupported(self) -> str | None:
        if self.run.model.name in SIZE_CONDITIONED:
            return None
        return (f"sets SDXL's size micro-conditioning; model {self.run.model.name!r} has none (models with it: "
                f"{list(SIZE_CONDITIONED)})")

    def settings(self, resolution: Resolution | None = None) -> dict[str, Any]:
        return {"size_conditioning": str(train_resolution(self.run))}

    def call_kwargs(self, resolution: Resolution) -> dict[str, Any]:
        train = train_resolution(self.run)
        return {"original_size": (train.height, train.width), "target_size": (train.height, train.width)}

    def apply(self, pipe, resolution: Resolution) -> None:
        if "original_size" not in inspect.signature(pipe.__call__).parameters:
            raise ValueError(f"method {self.name!r} needs SDXL's size micro-conditioning; {type(pipe).__name__} "
                             "takes no original_size")
