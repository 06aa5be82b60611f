"""The methods an experiment compares, each applied to a loaded pipeline for one resolution and removable.

dense        the pipeline as loaded
crdiff       block-wise pruning + POA (`pruning`, `amplify`)
bwp          block-wise pruning alone (k = 1)
uniform      POA with one ratio for all groups (the mean of `pruning.ratios`, or `baselines.uniform_ratio`)
random_mask  POA with a random mask of the same per-group sparsity (a "generic bad model")
wanda        POA with activation-aware pruning (|w|·||x||, Wanda) at the same ratios
freeu        FreeU (diffusers' built-in), per-model values of `baselines.freeu`
entropy      attention-entropy scaling (Jin et al. 2023) on self-attention only
native_resize  the dense pipeline at its training size (or nearest trained aspect bucket), then a centred
             crop + Lanczos resize to the target (crdiff.native); refuses a pipeline another method changed
"""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from crdiff import native
from crdiff.amplify import CRDiffConfig, apply_crdiff, denoiser_of, drop_hooks, remove_crdiff
from crdiff.models import MODELS, Resolution
from crdiff.pruning import GROUPS

METHODS = ("dense", "crdiff", "bwp", "uniform", "random_mask", "wanda", "freeu", "entropy", "native_resize")
PRUNED = ("crdiff", "bwp", "uniform", "random_mask", "wanda")  # the methods that prune at `pruning`'s ratios
# FreeU's published values (s1, s2, b1, b2); SD1.5 as in diffusers' docs, SD2.1 / SDXL from the FreeU authors.
# The miniature (digits) is an SD1.5-class UNet: it takes SD1.5's values (not tuned for it).
FREEU = {"sd15": (0.9, 0.2, 1.5, 1.6), "sd21": (0.9, 0.2, 1.4, 1.6), "sdxl": (0.9, 0.2, 1.3, 1.4),
         "digits": (0.9, 0.2, 1.5, 1.6)}
ENTROPY_HOOK = "crdiff_entropy_scaling"
# native_resize: the real SD models were trained on crops with sides multiples of 64; the miniature and the
# tiny stand-ins take their own side multiple (8: the VAE factor crdiff requires; 16 for DiTs).
NATIVE_MULTIPLE = 64


def pruning_settings(run, name: str, resolution: Resolution | None = None) -> CRDiffConfig | None:
    """The CR-Diff settings behind a pruning-based method at `resolution` (None for the others); the
    ratios are that resolution's searched preset under `pruning.searched` (crdiff.experiment.presets)."""
    from crdiff.experiment.presets import ratios_at

    p, a = run.pruning, run.amplify
    t, hold = p.targets, {"weights": a.weights, "memory_budget_gib": a.memory_budget_gib}
    if name not in PRUNED:
        return None
    ratios = ratios_at(run, resolution)[0]
    if name == "crdiff":
        return CRDiffConfig(ratios, a.k, p.criterion, p.seed, a.batched, t, **hold)
    if name == "bwp":
        return CRDiffConfig(ratios, 1.0, p.criterion, p.seed, a.batched, t, **hold)
    if name == "uniform":
        ratio = run.baselines.uniform_ratio
        ratio = sum(ratios.values()) / len(GROUPS) if ratio is None else ratio
        return CRDiffConfig({g: ratio for g in GROUPS}, a.k, p.criterion, p.seed, a.batched, t, **hold)
    criterion = "random" if name == "random_mask" else "wanda"
    return CRDiffConfig(ratios, a.k, criterion, p.seed, a.batched, t, **hold)


def freeu_values(run) -> tuple[float, float, float, float]:
    if run.baselines.freeu:
        return tuple(run.baselines.freeu)
    kind = run.model.name.removeprefix("tiny-")
    if kind not in FREEU:
        raise ValueError(f"no FreeU defaults for model {run.model.name!r}; set baselines.freeu=[s1,s2,b1,b2]")
    return FREEU[kind]


def settings(run, name: str, resolution: Resolution | None = None) -> dict[str, Any]:
    """Everything method `name` reads from the run besides model, sampler and prompts (for its run key)."""
    crd = pruning_settings(run, name, resolution)
    if crd is not None:
        return {"crdiff": crd, "calibration": calibration_key(run) if crd.criterion == "wanda" else None}
    if name == "freeu":
        return {"freeu": list(freeu_values(run))}
    if name == "entropy":
        return {"train_resolution": str(train_resolution(run))}
    if name == "native_resize":  # the bucket rule's inputs and the resize rule: changing either re-keys
        return {"native": native_rule(run), "fit": native.FIT}
    return {}


def native_rule(run) -> native.NativeRule:
    """Where native_resize draws for this model (`baselines.native_size`, docs/native_resize.md)."""
    train = train_resolution(run)
    if run.baselines.native_size == "train":
        return native.NativeRule(train, (train,))
    if run.model.name == "sdxl":
        return native.NativeRule(train, native.SDXL_BUCKETS)
    spec = MODELS.get(run.model.name)
    real = spec is None or not spec.source.startswith(("tiny:", "bundled:"))
    return native.NativeRule(train, native.area_buckets(train, NATIVE_MULTIPLE if real else spec.multiple))


def drawing_rule(run, name: str) -> native.NativeRule | None:
    """The bucket rule of a method that draws at another size than the target (None: draws at the target)."""
    return native_rule(run) if name == "native_resize" else None


def train_resolution(run) -> Resolution:
    if run.model.name in MODELS:
        return MODELS[run.model.name].resolution
    return Resolution.parse(run.resolutions.default[0])


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


def apply(pipe, run, name: str, resolution: Resolution) -> None:
    """Put `pipe` in method `name` for images of `resolution` (after `remove`)."""
    crd = pruning_settings(run, name, resolution)
    if crd is not None:
        run.pruning.check_model(denoiser_of(pipe))
        apply_crdiff(pipe, config=crd, activations=calibrate(pipe, run) if crd.criterion == "wanda" else None)
    elif name in ("freeu", "entropy") and getattr(pipe, "unet", None) is None:
        raise ValueError(f"method {name!r} is defined for UNet pipelines; {type(pipe).__name__} has none")
    elif name == "freeu":
        pipe.enable_freeu(*freeu_values(run))
    elif name == "entropy":
        train = train_resolution(run)
        apply_entropy_scaling(pipe.unet, train.height * train.width / (resolution.height * resolution.width))
    elif name == "native_resize":  # nothing to change: it only refuses a pipeline some method changed
        native.check_unchanged(pipe)


def remove(pipe) -> None:
    """Back to dense: every method's change undone."""
    remove_crdiff(pipe)
    if getattr(pipe, "unet", None) is not None:  # FreeU and entropy scaling are UNet methods
        pipe.disable_freeu()
        remove_entropy_scaling(pipe.unet)


class EntropyScaling(ModelHook):
    """On a self-attention's `to_q`: scale queries by sqrt(log N / log N_train) (Jin et al. 2023, Eq. 6).

    N is the token count of the call; N_train = N x (training pixels / test pixels) is what this layer
    saw at the training resolution. Scaling q scales every logit q.k/sqrt(d) by the same factor.
    """

    def __init__(self, pixel_ratio: float) -> None:
        super().__init__()
        self.pixel_ratio = pixel_ratio

    def post_forward(self, module, output: torch.Tensor) -> torch.Tensor:
        tokens = output.shape[1]
        train_tokens = tokens * self.pixel_ratio
        if train_tokens == tokens or tokens < 2 or train_tokens < 2:
            return output  # at the training token count: plain attention, exactly
        return output * math.sqrt(math.log(tokens) / math.log(train_tokens))


def apply_entropy_scaling(unet, pixel_ratio: float) -> None:
    for name, module in unet.named_modules():
        if name.endswith("attn1.to_q"):
            HookRegistry.check_if_exists_or_initialize(module).register_hook(EntropyScaling(pixel_ratio), ENTROPY_HOOK)


def remove_entropy_scaling(unet) -> None:
    drop_hooks(unet, (ENTROPY_HOOK,))
