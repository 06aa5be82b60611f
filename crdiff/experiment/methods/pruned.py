"""The pruning-based methods: CR-Diff and the ablations that change one of its parts.

crdiff       block-wise pruning + POA (`pruning`, `amplify`)
bwp          block-wise pruning alone (k = 1)
uniform      POA with one ratio for all groups (the mean of `pruning.ratios`, or `baselines.uniform_ratio`)
random_mask  POA with a random mask of the same per-group sparsity (a "generic bad model")
wanda        POA with activation-aware pruning (|w|·||x||, Wanda) at the same ratios
"""

from __future__ import annotations

from typing import Any

import torch

from crdiff.amplify import CRDiffConfig, apply_crdiff, denoiser_of, remove_crdiff
from crdiff.experiment.methods.base import Method, train_resolution
from crdiff.models import Resolution
from crdiff.pruning import GROUPS


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
    """POA with one ratio for all groups: `baselines.uniform_ratio`, else the mean of the resolution's ratios."""

    name = "uniform"

    def ratios(self, resolution: Resolution | None) -> dict[str, float]:
        ratio = self.run.baselines.uniform_ratio
        if ratio is None:
            ratio = sum(super().ratios(resolution).values()) / len(GROUPS)
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
