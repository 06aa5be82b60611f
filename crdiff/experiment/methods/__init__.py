"""The methods an experiment compares, one small class each (crdiff.experiment.methods.base.Method),
registered by name in REGISTRY: adding a method is one class and one line there.

dense          the pipeline as loaded
crdiff         block-wise pruning + POA (`pruning`, `amplify`)
bwp            block-wise pruning alone (k = 1)
uniform        POA with one ratio for all groups: the block-wise total sparsity (weighted by each group's
               targeted weights), or `baselines.uniform_ratio`
random_mask    POA with a random mask of the same per-group sparsity (a "generic bad model")
wanda          POA with activation-aware pruning (|w|·||x||, Wanda) at the same ratios
freeu          FreeU (diffusers' built-in), per-model values of `baselines.freeu`
entropy        attention-entropy scaling (Jin et al. 2023) on self-attention only
native_resize  the dense pipeline at its training size (or nearest trained aspect bucket), then a centred
               crop + Lanczos resize to the target (crdiff.native); refuses a pipeline another method changed
dense_steps2x  dense with twice the steps (CR-Diff's denoiser passes)            } controls
dense_cfg<s>   dense at guidance scale s, e.g. dense_cfg5 (a family: FAMILIES)    } (methods/controls.py)
dense_sizecond SDXL's original_size / target_size set to its training size       }
hidiffusion    HiDiffusion (its PyPI package, the optional extra `hidiffusion`), SD1.5 and SDXL only
"""

from __future__ import annotations

from typing import Any

from crdiff.amplify import CRDiffConfig
from crdiff.experiment.methods.base import Method
from crdiff.experiment.methods.controls import DenseGuidance, DenseSizeCond, DenseSteps2x
from crdiff.experiment.methods.entropy import Entropy
from crdiff.experiment.methods.freeu import FreeU
from crdiff.experiment.methods.hidiffusion import HiDiffusion
from crdiff.experiment.methods.native_resize import NativeResize
from crdiff.experiment.methods.pruned import BlockwisePruning, CRDiff, RandomMask, Uniform, Wanda
from crdiff.models import Resolution
from crdiff.native import NativeRule

REGISTRY: dict[str, type[Method]] = {m.name: m for m in (
    Method,  # dense
    CRDiff,
    BlockwisePruning,
    Uniform,
    RandomMask,
    Wanda,
    FreeU,
    Entropy,
    NativeResize,
    DenseSteps2x,
    DenseSizeCond,
    HiDiffusion,
)}
# Families: one class for many names, the name carrying its parameter (`dense_cfg5`: guidance 5).
FAMILIES: dict[str, type[Method]] = {m.name: m for m in (DenseGuidance,)}
METHODS = tuple(REGISTRY)
PRUNED = tuple(name for name, m in REGISTRY.items() if issubclass(m, CRDiff))  # prune at `pruning`'s ratios


def get(run, name: str) -> Method:
    """Method `name` bound to `run`."""
    if name in REGISTRY:
        return REGISTRY[name](run)
    family = next((f for f in FAMILIES if name.startswith(f)), None)
    if family is None:
        raise ValueError(f"unknown method {name!r}; valid choices: {sorted(REGISTRY)} and "
                         f"{[f + '<value>' for f in FAMILIES]}")
    return FAMILIES[family].parse(run, name)


def planned(run) -> tuple[list[str], dict[str, str]]:
    """The methods `run` plans, and those left out as not applicable to its model (name: why). A method
    that does not support the model is left out when `methods_if_supported` lists it, else refused."""
    keep, left_out = [], {}
    for name in run.methods:
        why = get(run, name).unsupported()
        if why and name in run.methods_if_supported:
            left_out[name] = why
        else:
            keep.append(name)
    return keep, left_out


def pruning_settings(run, name: str, resolution: Resolution | None = None) -> CRDiffConfig | None:
    """The CR-Diff settings behind a pruning-based method at `resolution` (None for the others)."""
    return get(run, name).pruning(resolution)


def settings(run, name: str, resolution: Resolution | None = None) -> dict[str, Any]:
    """Everything method `name` reads from the run besides model, sampler and prompts (for its run key)."""
    return get(run, name).settings(resolution)


def drawing_rule(run, name: str) -> NativeRule | None:
    """The bucket rule of a method that draws at another size than the target (None: draws at the target)."""
    return get(run, name).drawing_rule()


def apply(pipe, run, name: str, resolution: Resolution) -> None:
    """Put `pipe` in method `name` for images of `resolution` (after `remove`)."""
    get(run, name).apply(pipe, resolution)


def remove(pipe) -> None:
    """Back to dense: every method's change undone."""
    for method in (*REGISTRY.values(), *FAMILIES.values()):
        method.remove(pipe)
