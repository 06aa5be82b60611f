"""Pruned output amplification (POA), paper §3.2 / docs/method.md §3, with one UNet in memory.

Every UNet call returns `(1 - k) · dense + k · pruned`. The pruned branch is the same UNet whose
target layers (see `crdiff.pruning`) use `w · mask` computed from the dense weight at call time, one
layer at a time, so no second copy of the UNet exists. Both hooks are diffusers `ModelHook`s and
`remove_crdiff` restores the module exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from crdiff.pruning import CRITERIA, MagnitudeIndex, PruningPlan, plan_pruning, validate_ratios

POA_HOOK = "crdiff_poa"
PRUNE_HOOK = "crdiff_pruned_weight"


@dataclass
class CRDiffConfig:
    """The method's knobs: block-wise `ratios` {down, mid, up}, `criterion`, amplification `k`.

    `batched=True` (default) evaluates dense and pruned in one UNet call of twice the batch: faster
    for the UNets in docs/benchmarks.md, peak memory still <= 1.10x dense there; `batched=False` runs them
    one after the other (half the activation memory, for very large batches or resolutions).
    """

    ratios: Mapping[str, float] = field(default_factory=lambda: {"down": 0.3, "mid": 0.3, "up": 0.3})
    k: float = 1.5
    criterion: str = "magnitude"
    seed: int = 0
    batched: bool = True
    targets: tuple[str, ...] | None = None  # name suffixes restricting the targets; None: docs/method.md §1, §5

    def __post_init__(self) -> None:
        self.ratios = validate_ratios(self.ratios)
        self.targets = None if self.targets is None else tuple(self.targets)
        self.k = validate_k(self.k)
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion '{self.criterion}'; valid choices: {sorted(CRITERIA)}")


def validate_k(k: Any) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k):
        raise ValueError(f"k is {k!r}; valid range is any finite real number (paper: k > 1, REF 1.5)")
    return float(k)


class _Branch:
    """Which branch the target layers compute: 'dense', 'pruned', or 'both' (batched halves)."""

    def __init__(self) -> None:
        self.mode = "dense"
        self.split = 0


class PrunedWeightHook(ModelHook):
    """On one target Linear/Conv2d: in the pruned branch, run with `w · mask` built on the fly."""

    def __init__(self, name: str, plan: PruningPlan, branch: _Branch) -> None:
        super().__init__()
        self.name, self.plan, self.branch = name, plan, branch

    def new_forward(self, module: nn.Module, x: torch.Tensor, *args, **kwargs):
        mode = self.branch.mode
        if mode == "dense":
            return self.fn_ref.original_forward(x, *args, **kwargs)
        weight = self.plan.pruned_weight(self.name, module.weight)
        if mode == "pruned":
            return self._pruned(module, x, weight)
        split = self.branch.split
        dense = self.fn_ref.original_forward(x[:split], *args, **kwargs)
        return torch.cat([dense, self._pruned(module, x[split:], weight)])

    @staticmethod
    def _pruned(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if isinstance(module, nn.Linear):
            return F.linear(x, weight, module.bias)
        return module._conv_forward(x, weight, module.bias)


class POAHook(ModelHook):
    """On the UNet: return `dense.lerp(pruned, k)` for the whole (CFG) batch."""

    def __init__(self, config: CRDiffConfig, branch: _Branch) -> None:
        super().__init__()
        self.config, self.branch = config, branch

    def new_forward(self, module: nn.Module, *args, **kwargs):
        forward, k = self.fn_ref.original_forward, self.config.k
        if k == 0:  # dense exactly, no pruned pass
            return forward(*args, **kwargs)
        try:
            if k == 1:  # BWP alone
                self.branch.mode = "pruned"
                return forward(*args, **kwargs)
            if self.config.batched:
                return self._batched(forward, args, kwargs, k)
            dense = forward(*args, **kwargs)
            self.branch.mode = "pruned"
            pruned = forward(*args, **kwargs)
            return _map_sample(lambda d, p: d.lerp(p, k), dense, pruned)
        finally:
            self.branch.mode = "dense"

    def _batched(self, forward, args, kwargs, k: float):
        batch = _batch_size(args, kwargs)
        self.branch.mode, self.branch.split = "both", batch
        out = forward(*_repeat(args, batch), **_repeat(kwargs, batch))
        # 1. dense half and pruned half of one call; 2. combine them as in §3.2.
        return _map_sample(lambda o, _: o[:batch].lerp(o[batch:], k), out, out)


def _batch_size(args: tuple, kwargs: dict) -> int:
    sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))  # UNet / DiT
    return sample.shape[0]


_POSITIONS = ("img_ids", "txt_ids")  # FLUX's per-token positions (SDXL's per-sample time_ids are repeated)


def _repeat(obj: Any, batch: int) -> Any:
    """Stack every batch-leading tensor twice (dense half, pruned half); leave the rest as is.
    FLUX's `img_ids` / `txt_ids` are per-token positions, never per-sample: left alone."""
    if isinstance(obj, torch.Tensor):
        return torch.cat([obj, obj]) if obj.ndim > 0 and obj.shape[0] == batch else obj
    if isinstance(obj, dict):
        return {key: value if key in _POSITIONS else _repeat(value, batch) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_repeat(value, batch) for value in obj)
    return obj


def _map_sample(fn, dense: Any, pruned: Any) -> Any:
    """Apply `fn` to the `sample` of a UNet output (dataclass or tuple), keeping its type."""
    if isinstance(dense, tuple):
        return (fn(dense[0], pruned[0]), *dense[1:])
    dense.sample = fn(dense.sample, pruned.sample)
    return dense


def denoiser_of(target: Any) -> nn.Module:
    """The denoiser of a pipeline: its `.unet` (SD1.5 / SD2.1 / SDXL) or `.transformer` (SD3 / FLUX)."""
    unet = getattr(target, "unet", None) or getattr(target, "transformer", None) or target
    if not isinstance(unet, nn.Module):
        raise ValueError(f"expected a diffusers pipeline with a .unet / .transformer, or the model itself, got "
                         f"{type(target).__name__}")
    return unet


def apply_crdiff(
    pipe: Any,
    ratios: Mapping[str, float] | None = None,
    k: float | None = None,
    criterion: str | None = None,
    seed: int | None = None,
    batched: bool | None = None,
    config: CRDiffConfig | None = None,
    index: MagnitudeIndex | None = None,
    activations: Mapping[str, torch.Tensor] | None = None,
    targets: tuple[str, ...] | list[str] | None = None,
) -> Any:
    """Turn a pipeline (or UNet) into CR-Diff in place: BWP at `ratios` + POA with factor `k`.

    The method's settings come either as keywords (defaults: `CRDiffConfig()`) or as one `config`, never
    both. `index`: precomputed magnitude histograms, for many applications to the same weights;
    `activations`: calibration norms for criterion 'wanda', see `crdiff.calibration`; `targets`: module-name
    suffixes restricting the pruned layers.
    """
    knobs = {"ratios": ratios, "k": k, "criterion": criterion, "seed": seed, "batched": batched, "targets": targets}
    given = {name: value for name, value in knobs.items() if value is not None}
    if config is not None and given:
        raise ValueError(f"pass the CR-Diff settings either as config=CRDiffConfig(...) or as keywords, not both: "
                         f"got config and {sorted(given)}")
    config = config or CRDiffConfig(**given)
    unet = denoiser_of(pipe)
    if is_crdiff(unet):
        raise ValueError("CR-Diff is already applied; call crdiff.remove_crdiff(pipe) first")
    plan = plan_pruning(unet, config.ratios, config.criterion, config.seed, index, activations, config.targets)
    branch = _Branch()
    modules = dict(unet.named_modules())
    for name in plan.names():
        HookRegistry.check_if_exists_or_initialize(modules[name]).register_hook(
            PrunedWeightHook(name, plan, branch), PRUNE_HOOK
        )
    HookRegistry.check_if_exists_or_initialize(unet).register_hook(POAHook(config, branch), POA_HOOK)
    return pipe


def is_crdiff(pipe: Any) -> bool:
    registry = getattr(denoiser_of(pipe), "_diffusers_hook", None)
    return registry is not None and registry.get_hook(POA_HOOK) is not None


def crdiff_config(pipe: Any) -> CRDiffConfig:
    """The live config of an applied CR-Diff (its `k` may be changed in place between calls)."""
    if not is_crdiff(pipe):
        raise ValueError("CR-Diff is not applied to this pipeline")
    return denoiser_of(pipe)._diffusers_hook.get_hook(POA_HOOK).config


def remove_crdiff(pipe: Any) -> Any:
    """Undo `apply_crdiff`: every hook and attribute it added is gone; weights were never changed."""
    drop_hooks(denoiser_of(pipe), (POA_HOOK, PRUNE_HOOK))
    return pipe


def drop_hooks(root: nn.Module, names: tuple[str, ...]) -> None:
    """Remove the diffusers hooks `names` from every module under `root`, leaving no trace of an
    emptied registry or of its forward wrapper."""
    for module in root.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        for name in names:
            registry.remove_hook(name, recurse=False)
        if not registry.hooks:
            del module._diffusers_hook
            if getattr(module.__dict__.get("forward"), "__func__", None) is type(module).forward:
                del module.forward
