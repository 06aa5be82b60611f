"""The pruning-based methods: CR-Diff and the ablations that change one of its parts.

crdiff       block-wise pruning + POA (`pruning`, `amplify`)
bwp          block-wise pruning alone (k = 1)
uniform      POA with one ratio for all groups: CR-Diff's total sparsity (its ratios weighted by each group's
             targeted weight count), or `baselines.uniform_ratio`
random_mask  POA with a random mask of the same per-group sparsity (a "generic bad model")
wanda        POA with activation-aware pruning (|w|·||x||, Wanda) at the same ratios
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import torch

from crdiff.amplify import CRDiffConfig, apply_crdiff, denoiser_of, remove_crdiff
from crdiff.experiment.methods.base import Method, train_resolution
from crdiff.models import Resolution
from crdiff.pruning import GROUPS, target_modules


class CRDiff(Method):
    """Block-wise pruning at the resolution's ratios, and POA with `amplify.k` (docs/method.md)."""

    name = "crdiff"
    criterion: str | None = None  # None: pruning.criterion

    def ratios(self, resolution: Resolution | None) -> dict[str, float]:
        """The resolution's searched preset under `pruning.searched` (crdiff.experiment.presets), else pruning.ratios."""
        from crdiff.experiment.presets import ratios_at

        return ratios_at(self.run, resolution)[0]

    def k(self) -> float:
        return self.run.amplify.k

    def pruning(self, resolution: Resolution | None = None) -> CRDiffConfig:
        p, a = self.run.pruning, self.run.amplify
        return CRDiffConfig(self.ratios(resolution), self.k(), self.criterion or p.criterion, p.seed, a.batched,
                            p.targets, weights=a.weights, memory_budget_gib=a.memory_budget_gib)

    def settings(self, resolution: Resolution | None = None) -> dict[str, Any]:
        crd = self.pruning(resolution)
        return {"crdiff": crd, "calibration": calibration_key(self.run) if crd.criterion == "wanda" else None}

    def apply(self, pipe, resolution: Resolution) -> None:
        crd = self.pruning(resolution)
        self.run.pruning.check_model(denoiser_of(pipe))
        apply_crdiff(pipe, config=crd, activations=calibrate(pipe, self.run) if crd.criterion == "wanda" else None)

    @classmethod
    def remove(cls, pipe) -> None:
        remove_crdiff(pipe)


class BlockwisePruning(CRDiff):
    """The pruned network alone: CR-Diff's ratios, k = 1 (one evaluation per step)."""

    name = "bwp"

    def k(self) -> float:
        return 1.0


class Uniform(CRDiff):
    """POA with one ratio for all groups, pruning as many weights in total as CR-Diff does at this
    resolution: sum_g r_g N_g / sum_g N_g, N_g the group's targeted weight count (`baselines.uniform_ratio`
    overrides it)."""

    name = "uniform"

    def ratios(self, resolution: Resolution | None) -> dict[str, float]:
        ratio = self.run.baselines.uniform_ratio
        if ratio is None:
            ratios, sizes = super().ratios(resolution), group_sizes(self.run)
            ratio = sum(ratios[g] * sizes[g] for g in GROUPS) / sum(sizes.values())
        return {g: ratio for g in GROUPS}


class RandomMask(CRDiff):
    """POA whose pruned branch has a random mask of CR-Diff's per-group sparsity (a generic weaker model)."""

    name = "random_mask"
    criterion = "random"


class Wanda(CRDiff):
    """POA with Wanda's activation-aware criterion |w|·||x|| at CR-Diff's ratios."""

    name = "wanda"
    criterion = "wanda"


def calibration_key(run) -> dict[str, Any]:
    """What the calibration norms depend on (criterion wanda)."""
    from crdiff.experiment.prompts import load_prompts

    prompts = load_prompts(run.prompts.kind, run.prompts.path, run.prompts.limit, run.prompts.texts)
    n = min(run.pruning.calibration_prompts, len(prompts))
    return {"prompts": list(prompts.prompts[:n]), "steps": run.pruning.calibration_steps,
            "resolution": str(train_resolution(run)), "seed": run.sampler.seed, "guidance": run.sampler.guidance}


def calibrate(pipe, run) -> dict[str, torch.Tensor]:
    """The calibration norms of `run` (cached on the pipeline: one calibration per run and model)."""
    from crdiff.calibration import activation_norms

    c = calibration_key(run)
    key = repr(c)
    cache = pipe.__dict__.setdefault("_crdiff_calibration", {})
    if key not in cache:
        res = Resolution.parse(c["resolution"])
        cache[key] = activation_norms(pipe, c["prompts"], res.height, res.width, c["steps"], c["seed"], c["guidance"])
    return cache[key]


def group_sizes(run) -> dict[str, int]:
    """Targeted weights per group (N_g) of the run's denoiser, counted from its architecture on the meta
    device: no weights load, so the run key of `uniform` is known at plan time."""
    return _group_sizes(run.model.name, run.model.source, None if run.pruning.targets is None
                        else tuple(run.pruning.targets))


@functools.lru_cache(maxsize=None)
def _group_sizes(name: str, source: str | None, targets: tuple[str, ...] | None) -> dict[str, int]:
    groups = target_modules(meta_denoiser(name, source), targets)
    return {g: sum(m.weight.numel() for m in groups[g].values()) for g in GROUPS}


def meta_denoiser(name: str, source: str | None = None) -> torch.nn.Module:
    """The denoiser of model `name` built on the meta device: a local folder's own `unet|transformer/config.json`
    (`source`, the bundled miniature, a folder given as the name), else the real configs in crdiff.models
    (a hub `source` of a registry name shares its architecture), else the tiny builders (on the CPU)."""
    from crdiff import tiny
    from crdiff.amplify import denoiser_of
    from crdiff.models import MODELS, TRANSFORMER_CONFIGS, UNET_CONFIGS, random_transformer, random_unet

    spec = MODELS.get(name)
    folder = source or (name if spec is None else None)
    if spec is not None and spec.source.startswith("bundled:") and source is None:
        from crdiff.miniature import bundled

        folder = bundled(spec.source.removeprefix("bundled:"))[0]  # each miniature its own folder
    if folder is not None and Path(folder).is_dir():
        return _from_folder(Path(folder))
    if name in UNET_CONFIGS:
        return random_unet(name, meta=True)
    if name in TRANSFORMER_CONFIGS:
        return random_transformer(name, meta=True)
    if spec is not None and spec.source.startswith("tiny:"):  # built in full (tiny: ~1 s), leaving torch's RNG as it was
        with torch.random.fork_rng():
            return denoiser_of(tiny.build(spec.source.removeprefix("tiny:")))
    raise ValueError(f"uniform prunes CR-Diff's total sparsity, counted from the denoiser's architecture, which is "
                     f"unknown for model {name!r} (source {source!r}); set baselines.uniform_ratio instead")


def _from_folder(folder: Path) -> torch.nn.Module:
    import diffusers

    for part in ("unet", "transformer"):
        config = folder / part / "config.json"
        if config.is_file():
            cls = getattr(diffusers, json.loads(config.read_text())["_class_name"])
            with torch.device("meta"):
                return cls.from_config(cls.load_config(config.parent))
    raise ValueError(f"{folder} has no unet/config.json or transformer/config.json to count the pruned weights "
                     "from; set baselines.uniform_ratio instead")
