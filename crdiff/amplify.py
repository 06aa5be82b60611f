"""Pruned output amplification (POA), paper §3.2 / docs/method.md §3, with one UNet in memory.

Every UNet call returns `(1 - k) · dense + k · pruned`. The pruned branch is the same UNet whose
target layers (see `crdiff.pruning`) use the pruned weight `w · mask` instead of `w`, held one of two
ways (`weights`): `on_the_fly` computes it from the dense weight at every call, one layer at a time
(no second copy of anything); `cached` computes it once at apply time and keeps it (the target
layers' pruned weights only, same dtype and device as the dense ones); `auto` caches when that fits
the memory budget (see `memory_budget`). The images are the same in every mode. Both hooks are
diffusers `ModelHook`s and `remove_crdiff` restores the module exactly and frees the cache.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from diffusers.hooks import HookRegistry, ModelHook
from torch import nn

from crdiff import memory
from crdiff.pruning import CRITERIA, MagnitudeIndex, PruningPlan, plan_pruning, validate_ratios

POA_HOOK = "crdiff_poa"
PRUNE_HOOK = "crdiff_pruned_weight"
WEIGHTS = ("on_the_fly", "cached", "auto")
BATCHED = (True, False, "auto")
# weights=auto without a budget: the cache may take the device's free memory minus this share of its
# total, which stays free for activations (batched POA doubles them), the VAE decode and the metrics.
RESERVE = 0.25

log = logging.getLogger("crdiff")


@dataclass
class CRDiffConfig:
    """The method's knobs: block-wise `ratios` {down, mid, up}, `criterion`, amplification `k`.

    `batched=True` (default) evaluates dense and pruned in one UNet call of twice the batch: faster
    for the UNets in docs/benchmarks.md, peak memory still <= 1.10x dense there; `batched=False` runs them
    one after the other (half the activation memory, for very large batches or resolutions); `"auto"`
    batches unless CUDA memory is short (crdiff.memory: measured on the first call of each input shape).
    `weights` ('on_the_fly' | 'cached' | 'auto') and `memory_budget_gib` (auto only; None: free
    device memory minus `RESERVE` of the total) decide how the pruned weights are held; see the module.
    """

    ratios: Mapping[str, float] = field(default_factory=lambda: {"down": 0.3, "mid": 0.3, "up": 0.3})
    k: float = 1.5
    criterion: str = "magnitude"
    seed: int = 0
    batched: bool | str = True  # True (batched) | False (sequential) | "auto"
    targets: tuple[str, ...] | None = None  # name suffixes restricting the targets; None: docs/method.md §1, §5
    weights: str = "auto"
    memory_budget_gib: float | None = None

    def __post_init__(self) -> None:
        self.ratios = validate_ratios(self.ratios)
        validate_batched(self.batched)
        validate_weights(self.weights, self.memory_budget_gib)
        self.targets = None if self.targets is None else tuple(self.targets)
        self.k = validate_k(self.k)
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown criterion '{self.criterion}'; valid choices: {sorted(CRITERIA)}")


def validate_k(k: Any) -> float:
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k):
        raise ValueError(f"k is {k!r}; valid range is any finite real number (paper: k > 1, REF 1.5)")
    return float(k)


def validate_batched(batched: Any) -> None:
    if batched not in BATCHED or isinstance(batched, (int, float)) and not isinstance(batched, bool):
        raise ValueError(f"batched is {batched!r}; valid choices: true (one batched call), false (sequential "
                         "branches), 'auto' (batched unless CUDA memory is short)")


def validate_weights(weights: Any, memory_budget_gib: Any) -> None:
    if weights not in WEIGHTS:
        raise ValueError(f"weights is {weights!r}; valid choices: {list(WEIGHTS)}")
    if memory_budget_gib is None:
        return
    if weights != "auto":  # refuse what would be ignored
        raise ValueError(f"memory_budget_gib={memory_budget_gib!r} is read only by weights='auto', not {weights!r}; "
                         "drop one of them")
    if isinstance(memory_budget_gib, bool) or not isinstance(memory_budget_gib, (int, float)) \
            or not math.isfinite(memory_budget_gib) or memory_budget_gib < 0:
        raise ValueError(f"memory_budget_gib is {memory_budget_gib!r}; it must be a finite number of GiB >= 0")


class _Branch:
    """Which branch the target layers compute: 'dense', 'pruned', or 'both' (batched halves)."""

    def __init__(self) -> None:
        self.mode = "dense"
        self.split = 0


class PrunedWeightHook(ModelHook):
    """On one target Linear/Conv2d: in the pruned branch, run with `w · mask` (cached or built on the fly)."""

    def __init__(self, name: str, plan: PruningPlan, branch: _Branch) -> None:
        super().__init__()
        self.name, self.plan, self.branch = name, plan, branch
        self.cached: torch.Tensor | None = None
        self.stamp: tuple | None = None

    def cache(self, weight: torch.Tensor) -> None:
        """Compute the pruned weight once (a layer the plan leaves whole needs no copy)."""
        if self.plan.prunes(self.name):
            with torch.no_grad():
                self.cached, self.stamp = self.plan.pruned_weight(self.name, weight.detach()), _stamp(weight)

    def pruned_weight(self, module: nn.Module) -> torch.Tensor:
        if self.cached is None:
            return self.plan.pruned_weight(self.name, module.weight)
        if _stamp(module.weight) != self.stamp:  # a stale cache would silently give other images
            raise RuntimeError(f"the dense weight of {self.name} was moved, cast or changed in place after "
                               "apply_crdiff with weights='cached'; call remove_crdiff and apply_crdiff again")
        return self.cached

    def new_forward(self, module: nn.Module, x: torch.Tensor, *args, **kwargs):
        mode = self.branch.mode
        if mode == "dense":
            return self.fn_ref.original_forward(x, *args, **kwargs)
        weight = self.pruned_weight(module)
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


def _stamp(weight: torch.Tensor) -> tuple:
    """Changes when the tensor is moved or cast (new storage) or edited in place (version counter)."""
    return weight.data_ptr(), weight._version, weight.dtype, weight.device


class POAHook(ModelHook):
    """On the UNet: return `dense.lerp(pruned, k)` for the whole (CFG) batch."""

    def __init__(self, config: CRDiffConfig, branch: _Branch, weights: str) -> None:
        super().__init__()
        self.config, self.branch, self.weights = config, branch, weights  # weights: the mode in use
        self.decided: dict[tuple, str] = {}  # batched="auto" on CUDA: input shape -> batched | sequential
        self.used: set[str] = set()  # how the calls since the caller last cleared it ran

    def new_forward(self, module: nn.Module, *args, **kwargs):
        forward, k = self.fn_ref.original_forward, self.config.k
        if k == 0:  # dense exactly, no pruned pass
            return forward(*args, **kwargs)
        try:
            if k == 1:  # BWP alone
                self.branch.mode = "pruned"
                return forward(*args, **kwargs)
            sample = _sample(args, kwargs)
            mode = self._branches(sample)
            self.used.add(mode or "sequential")
            if mode == "batched":
                return self._batched(forward, args, kwargs, k)
            if mode is None:  # auto, first call of this shape on CUDA: one branch's activations decide
                dense, used = memory.measure_branch(lambda: forward(*args, **kwargs), sample.device)
                fits = memory.batched_fits(used, memory.available(sample.device))
                self.decided[_shape(sample)] = "batched" if fits else "sequential"
            else:
                dense = forward(*args, **kwargs)
            self.branch.mode = "pruned"
            pruned = forward(*args, **kwargs)
            return _map_sample(lambda d, p: d.lerp(p, k), dense, pruned)
        finally:
            self.branch.mode = "dense"

    def _branches(self, sample: torch.Tensor) -> str | None:
        """`batched` or `sequential` for this call; None: `auto` has not yet measured this input shape."""
        batched = self.config.batched
        if batched != "auto":
            return "batched" if batched else "sequential"
        if sample.device.type != "cuda":  # auto decides from free memory on CUDA only
            return "batched"
        return self.decided.get(_shape(sample))

    def _batched(self, forward, args, kwargs, k: float):
        batch = _batch_size(args, kwargs)
        self.branch.mode, self.branch.split = "both", batch
        out = forward(*_repeat(args, batch), **_repeat(kwargs, batch))
        # 1. dense half and pruned half of one call; 2. combine them as in §3.2.
        return _map_sample(lambda o, _: o[:batch].lerp(o[batch:], k), out, out)


def _sample(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))  # UNet / DiT


def _batch_size(args: tuple, kwargs: dict) -> int:
    return _sample(args, kwargs).shape[0]


def _shape(sample: torch.Tensor) -> tuple:
    return tuple(sample.shape), sample.dtype


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
    weights: str | None = None,
    memory_budget_gib: float | None = None,
) -> Any:
    """Turn a pipeline (or UNet) into CR-Diff in place: BWP at `ratios` + POA with factor `k`.

    The method's settings come either as keywords (defaults: `CRDiffConfig()`) or as one `config`, never
    both. `index`: precomputed magnitude histograms, for many applications to the same weights;
    `activations`: calibration norms for criterion 'wanda', see `crdiff.calibration`; `targets`: module-name
    suffixes restricting the pruned layers; `weights`: how pruned weights are held (see the module).
    """
    knobs = {"ratios": ratios, "k": k, "criterion": criterion, "seed": seed, "batched": batched, "targets": targets,
             "weights": weights, "memory_budget_gib": memory_budget_gib}
    given = {name: value for name, value in knobs.items() if value is not None}
    if config is not None and given:
        raise ValueError(f"pass the CR-Diff settings either as config=CRDiffConfig(...) or as keywords, not both: "
                         f"got config and {sorted(given)}")
    config = config or CRDiffConfig(**given)
    unet = denoiser_of(pipe)
    if is_crdiff(unet):
        raise ValueError("CR-Diff is already applied; call crdiff.remove_crdiff(pipe) first")
    offloaded = _offloaded(unet)
    if offloaded and config.weights == "cached":
        raise ValueError("weights='cached' cannot follow weights that accelerate offloading moves between devices; "
                         "use weights='on_the_fly' (or 'auto')")
    plan = plan_pruning(unet, config.ratios, config.criterion, config.seed, index, activations, config.targets)
    branch = _Branch()
    modules = dict(unet.named_modules())
    hooks = {name: PrunedWeightHook(name, plan, branch) for name in plan.names()}
    used = choose_weights(config, [modules[n].weight for n in plan.names() if plan.prunes(n)], offloaded)
    for name, hook in hooks.items():
        if used == "cached":
            hook.cache(modules[name].weight)
        HookRegistry.check_if_exists_or_initialize(modules[name]).register_hook(hook, PRUNE_HOOK)
    HookRegistry.check_if_exists_or_initialize(unet).register_hook(POAHook(config, branch, used), POA_HOOK)
    return pipe


def choose_weights(config: CRDiffConfig, pruned: list[torch.Tensor], offloaded: bool = False) -> str:
    """The mode `config.weights` resolves to, given the dense weights whose pruned copies a cache holds
    (`offloaded`: accelerate moves the weights between devices, so a cache would go stale every call)."""
    if offloaded and config.weights == "auto":
        log.info("crdiff: pruned weights auto -> on_the_fly (the model is offloaded)")
        return "on_the_fly"
    if config.weights != "auto":
        log.info("crdiff: pruned weights %s", config.weights)
        return config.weights
    need = sum(w.numel() * w.element_size() for w in pruned)
    device = pruned[0].device if pruned else torch.device("cpu")
    budget = memory_budget(device) if config.memory_budget_gib is None else config.memory_budget_gib * 2**30
    used = "cached" if budget is not None and need <= budget else "on_the_fly"
    log.info("crdiff: pruned weights auto -> %s (cache %.3f GiB, budget %s on %s)", used, need / 2**30,
             "unknown" if budget is None else f"{budget / 2**30:.3f} GiB", device)
    return used


def _offloaded(model: nn.Module) -> bool:
    return any(hasattr(m, "_hf_hook") for m in model.modules())  # accelerate's offloading / device-map hooks


def memory_budget(device: torch.device) -> int | None:
    """Bytes `auto` lets the cache take: free memory of `device` minus `RESERVE` of its total (None:
    no way to ask this device type). CPU: MemAvailable of /proc/meminfo, blind to cgroup limits."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
    elif device.type == "cpu":
        free, total = _host_memory()
    else:
        return None
    return max(0, int(free - RESERVE * total))


def _host_memory() -> tuple[int, int]:
    try:
        info = dict(line.split(":", 1) for line in open("/proc/meminfo"))
        return int(info["MemAvailable"].split()[0]) * 1024, int(info["MemTotal"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page


def is_crdiff(pipe: Any) -> bool:
    return _poa_hook(pipe) is not None


def _poa_hook(pipe: Any) -> POAHook | None:
    registry = getattr(denoiser_of(pipe), "_diffusers_hook", None)
    return None if registry is None else registry.get_hook(POA_HOOK)


def crdiff_config(pipe: Any) -> CRDiffConfig:
    """The live config of an applied CR-Diff (its `k` may be changed in place between calls; the
    cached pruned weights do not depend on k)."""
    if not is_crdiff(pipe):
        raise ValueError("CR-Diff is not applied to this pipeline")
    return _poa_hook(pipe).config


def weights_used(pipe: Any) -> str | None:
    """How the applied CR-Diff holds its pruned weights ('cached' or 'on_the_fly'; None: not applied)."""
    hook = _poa_hook(pipe)
    return None if hook is None else hook.weights


def branches_used(pipe: Any, clear: bool = True) -> list[str]:
    """How POA's calls ran since the last clear: ['batched'], ['sequential'], both, or [] (none ran)."""
    hook = _poa_hook(pipe)
    if hook is None:
        return []
    used = sorted(hook.used)
    if clear:
        hook.used.clear()
    return used


def remove_crdiff(pipe: Any) -> Any:
    """Undo `apply_crdiff`: every hook and attribute it added is gone, the cache is freed at once
    (hooks sit in reference cycles, so it is released explicitly); weights were never changed."""
    for module in denoiser_of(pipe).modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = None if registry is None else registry.get_hook(PRUNE_HOOK)
        if hook is not None:
            hook.cached = None
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
