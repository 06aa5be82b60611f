"""`freeu`: FreeU (Si et al. 2024), diffusers' built-in, with per-model values of `baselines.freeu`."""

from __future__ import annotations

from typing import Any

from crdiff.experiment.methods.base import Method, unet_of
from crdiff.models import Resolution

# FreeU's published values (s1, s2, b1, b2); SD1.5 as in diffusers' docs, SD2.1 / SDXL from the FreeU authors.
# The miniature (digits) is an SD1.5-class UNet: it takes SD1.5's values (not tuned for it).
FREEU = {"sd15": (0.9, 0.2, 1.5, 1.6), "sd21": (0.9, 0.2, 1.4, 1.6), "sdxl": (0.9, 0.2, 1.3, 1.4),
         "digits": (0.9, 0.2, 1.5, 1.6)}


def freeu_values(run) -> tuple[float, float, float, float]:
    if run.baselines.freeu:
        return tuple(run.baselines.freeu)
    kind = run.model.name.removeprefix("tiny-")
    if kind not in FREEU:
        raise ValueError(f"no FreeU defaults for model {run.model.name!r}; set baselines.freeu=[s1,s2,b1,b2]")
    return FREEU[kind]


class FreeU(Method):
    """Re-weights the UNet's skip and backbone features in its up blocks (s1, s2, b1, b2)."""

    name = "freeu"

    def settings(self, resolution: Resolution | None = None) -> dict[str, Any]:
        return {"freeu": list(freeu_values(self.run))}

    def apply(self, pipe, resolution: Resolution) -> None:
        unet_of(pipe, self.name)
        pipe.enable_freeu(*freeu_values(self.run))

    @classmethod
    def remove(cls, pipe) -> None:
        if getattr(pipe, "unet", None) is not None:
            pipe.disable_freeu()
