"""`hidiffusion`: HiDiffusion (Zhang et al., ECCV 2024: RAU-Net + MSW-MSA) from its PyPI package
(`pip install 'crdiff[hidiffusion]'`, pinned to 0.1.10), on SD1.5 and SDXL (docs/method.md §5, "HiDiffusion").

The compatibility layer, the smallest that lets 0.1.10 run on diffusers 0.42.1:
1. `hidiffusion` imports `diffusers.pipelines.controlnet.multicontrolnet`, which diffusers moved to
   `diffusers.models.controlnets.multicontrolnet`: the old name is aliased to the new module (`MOVED`).
2. it picks its patch by `pipe.name_or_path` (a published hub id) or else by the module names of an
   SD1.5 / SDXL UNet, and then reads `'inpainting' in pipe.name_or_path`, a TypeError on a pipeline built
   in memory (None). The run's model names the published id (`SUPPORTED`) for the duration of
   `apply_hidiffusion`, then the pipeline's own config comes back.
3. `remove_hidiffusion` restores the classes and removes its hook, but never undoes `num_upsamplers += 12`,
   the attributes it sets on every module (`info`, `model`, step counters) or `pipe.info`, and each apply
   adds 12 more upsamplers. `remove` here puts every module's attributes and class back as they were.
4. MSW-MSA draws each block's window shift from torch's global generator, shared by the batch; crdiff
   reseeds that generator at the first denoiser call of every pipeline call (`SHIFT_SEED`), so an image
   depends on its own seed only, not on the batch it was drawn in, its rank or what ran before.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from typing import Any

import torch
from diffusers.configuration_utils import FrozenDict

from crdiff import native
from crdiff.experiment.methods.base import Method, unet_of
from crdiff.models import Resolution

# The registry's models HiDiffusion supports, by the published id it recognises. Its SD2.1 is
# stable-diffusion-2-1-base (512x512, epsilon), not the 768 v-prediction model behind `sd21`.
SUPPORTED = {"sd15": "runwayml/stable-diffusion-v1-5", "sdxl": "stabilityai/stable-diffusion-xl-base-1.0"}
MOVED = {"diffusers.pipelines.controlnet.multicontrolnet": "diffusers.models.controlnets.multicontrolnet"}
SHIFT_SEED = 0  # the window shifts' generator at the start of every pipeline call
STATE = "_crdiff_hidiffusion"  # on the pipeline while applied: what `remove` restores


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


def snapshot(obj: Any) -> tuple[type, dict[str, Any]]:
    """What hidiffusion may change on `obj`: its class and its attribute values."""
    return type(obj), dict(vars(obj))


def restore(obj: Any, state: tuple[type, dict[str, Any]]) -> None:
    """`obj` back to its `snapshot`: the class, attributes added since removed, reassigned ones put back."""
    cls, before = state
    obj.__class__ = cls
    now = vars(obj)
    for key in set(now) - set(before):
        del now[key]
    now.update((key, value) for key, value in before.items() if now.get(key) is not value)


class HiDiffusion(Method):
    """HiDiffusion's resolution-aware UNet and windowed self-attention, applied by its package and
    removed exactly. One denoiser pass per step, as dense."""

    name = "hidiffusion"

    def unsupported(self) -> str | None:
        if self.run.model.name in SUPPORTED:
            return None
        return (f"supports models {sorted(SUPPORTED)}; {self.run.model.name!r} is not one (its SD2.1 is "
                "stable-diffusion-2-1-base, not sd21's 768 v-prediction model; it patches the full-size UNets "
                "by module name, which tiny stand-ins, miniatures and DiTs do not have)")

    def check(self) -> None:
        super().check()
        hidiffusion()

    def settings(self, resolution: Resolution | None = None) -> dict[str, Any]:
        return {"hidiffusion": metadata.version("hidiffusion"), "raunet": True, "window_attn": True,
                "shift_seed": SHIFT_SEED}

    def apply(self, pipe, resolution: Resolution) -> None:
        self.check()
        native.check_unchanged(pipe, self.name)  # an alternative to CR-Diff, FreeU, ...: not combined with them
        unet = unet_of(pipe, self.name)
        model = self.run.model.name
        missing = set(getattr(hidiffusion().hidiffusion, f"{model}_module_key")) - dict(unet.named_modules()).keys()
        if missing:  # its own test of the architecture: it would patch whichever of its blocks exist
            raise ValueError(f"method 'hidiffusion': this UNet is not the {model} architecture it patches "
                             f"(no module {sorted(missing)[0]!r})")
        state = {"pipe": snapshot(pipe), "unet": {name: snapshot(m) for name, m in unet.named_modules()}}
        setattr(pipe, STATE, state)
        pipe._internal_dict = FrozenDict({**pipe.config, "_name_or_path": SUPPORTED[model]})  # (2)
        try:
            hidiffusion().apply_hidiffusion(pipe)
        except Exception:
            self.remove(pipe)
            raise
        finally:
            pipe._internal_dict = state["pipe"][1]["_internal_dict"]
        state["seed"] = unet.register_forward_pre_hook(reseed(pipe), with_kwargs=True)

    @classmethod
    def remove(cls, pipe) -> None:
        state = vars(pipe).get(STATE)
        if state is None:
            return
        if "seed" in state:
            state["seed"].remove()
        hidiffusion().remove_hidiffusion(pipe)  # its hook on the UNet
        for name, module in pipe.unet.named_modules():  # (3) what remove_hidiffusion leaves behind
            restore(module, state["unet"][name])
        restore(pipe, state["pipe"])  # pipe.info, the call's attributes, our STATE


def reseed(pipe):
    """A UNet pre-hook: torch's global generator at SHIFT_SEED before the first denoiser call of each
    pipeline call, recognised by its timestep (the scheduler's first), not by counting calls: a call that
    stopped half way (an interrupt, an out-of-memory error) leaves nothing behind for the next one."""

    def hook(module, args, kwargs) -> None:
        t = args[1] if len(args) > 1 else kwargs.get("timestep")
        first = pipe.scheduler.timesteps[0]
        if t is not None and torch.as_tensor(t).flatten()[0].item() == torch.as_tensor(first).item():
            torch.manual_seed(SHIFT_SEED)

    return hook
