"""`hidiffusion`: HiDiffusion (Zhang et al. 2024: RAU-Net + MSW-MSA), from its PyPI package `hidiffusion`
(the optional extra `pip install crdiff[hidiffusion]`, pinned to 0.1.10), for SD1.5 and SDXL.

The compatibility layer, the smallest that works with diffusers 0.42.1:
1. hidiffusion imports `diffusers.pipelines.controlnet.multicontrolnet`, which diffusers moved to
   `diffusers.models.controlnets.multicontrolnet`: the old name is aliased to the new module.
2. it picks its patch by `pipe.name_or_path` (hub ids) or by the full module names of an SD1.5 / SDXL
   UNet, and fails with a TypeError on a pipeline built in memory (`name_or_path` None): the run's model
   names the published id for the duration of `apply_hidiffusion`, then the pipeline's own is restored.
3. `remove_hidiffusion` restores the classes and hooks but never undoes `num_upsamplers += 12`, the
   attributes it sets on every module (`info`, `model`, timestep counters) or `pipe.info`; each apply adds
   12 more. `remove` here puts all of that back, so the pipeline is dense again bit for bit.

Its SD2.1 support is `stable-diffusion-2-1-base` (512, epsilon), not the 768 v-prediction model behind
`sd21`; that, the tiny stand-ins, the miniature and DiTs are refused, and so is a pipeline another
method changed (HiDiffusion is an alternative, not a combination).
"""

from __future__ import annotations

import importlib
import sys

from crdiff import native
from crdiff.experiment.methods.base import Method, unet_of
from crdiff.models import Resolution

# The published ids hidiffusion recognises, for the registry's models it supports.
SUPPORTED = {"sd15": "runwayml/stable-diffusion-v1-5", "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}
STATE = "_crdiff_hidiffusion"  # on the pipeline while applied: what `remove` restores
MOVED = {"diffusers.pipelines.controlnet.multicontrolnet": "diffusers.models.controlnets.multicontrolnet"}


def hidiffusion():
    """The `hidiffusion` module, imported through the alias of the module diffusers moved."""
    for old, new in MOVED.items():
        try:
            importlib.import_module(old)
        except ImportError:
            sys.modules[old] = importlib.import_module(new)
    try:
        return importlib.import_module("hidiffusion")
    except ImportError:
        raise ValueError("method 'hidiffusion' needs its package: pip install 'crdiff[hidiffusion]' "
                         "(hidiffusion==0.1.10)") from None


class HiDiffusion(Method):
    """HiDiffusion's RAU-Net and windowed self-attention patches on the UNet, removed exactly."""

    name = "hidiffusion"

    def check(self) -> None:
        if self.run.model.name not in SUPPORTED:
            raise ValueError(f"method 'hidiffusion' supports models {sorted(SUPPORTED)}; {self.run.model.name!r} is "
                             "not one (sd21 is the 768 v-prediction model, HiDiffusion's is 2-1-base; tiny "
                             "stand-ins and DiTs have no architecture it patches)")
        hidiffusion()

    def apply(self, pipe, resolution: Resolution) -> None:
        self.check()
        native.check_unchanged(pipe)  # a changed pipeline is refused, not combined
        unet = unet_of(pipe, self.name)
        state = {"modules": {m: set(vars(m)) for m in unet.modules()}, "pipe": set(vars(pipe)),
                 "num_upsamplers": unet.num_upsamplers, "name_or_path": pipe.name_or_path}
        pipe.register_to_config(_name_or_path=SUPPORTED[self.run.model.name])
        try:
            hidiffusion().apply_hidiffusion(pipe)
        except Exception:
            setattr(pipe, STATE, state)
            self.remove(pipe)
            raise
        finally:
            pipe.register_to_config(_name_or_path=state["name_or_path"])
        setattr(pipe, STATE, state)

    @classmethod
    def remove(cls, pipe) -> None:
        state = vars(pipe).pop(STATE, None)
        if state is None:
            return
        hidiffusion().remove_hidiffusion(pipe)  # classes and hooks
        unet = pipe.unet
        for module in unet.modules():  # what remove_hidiffusion leaves behind
            for name in set(vars(module)) - state["modules"].get(module, set()):
                delattr(module, name)
        for name in set(vars(pipe)) - state["pipe"]:
            delattr(pipe, name)
        unet.num_upsamplers = state["num_upsamplers"]
