"""Calibration for activation-aware pruning (criterion `wanda`): the input-feature norms of every target
layer, accumulated over all tokens of a few dense denoising runs on calibration prompts.

The norms are taken once at the model's training resolution, so, like magnitude pruning, the mask is
one per model and does not change with the resolution being generated.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from crdiff.pruning import target_modules


@torch.no_grad()
def activation_norms(pipe, prompts: Sequence[str], height: int, width: int, steps: int = 4, seed: int = 0,
                     guidance: float = 7.5) -> dict[str, torch.Tensor]:
    """{target layer name: ||x_j||_2 per input feature j} (float64, CPU) over the calibration run."""
    from crdiff.amplify import denoiser_of, is_crdiff

    model = denoiser_of(pipe)
    if is_crdiff(model):
        raise ValueError("calibrate the dense model: call crdiff.remove_crdiff(pipe) first")
    if not prompts:
        raise ValueError("calibration needs at least one prompt")
    sums: dict[str, torch.Tensor] = {}
    handles = []

    def accumulate(name: str):
        def hook(module, args):
            x = args[0].detach()
            # Linear: features are the last dim; Conv2d: channels (dim 1)
            x = x.movedim(1, -1) if isinstance(module, torch.nn.Conv2d) else x
            squares = x.reshape(-1, x.shape[-1]).double().pow(2).sum(0).cpu()
            sums[name] = sums[name] + squares if name in sums else squares
        return hook

    try:
        for modules in target_modules(model).values():
            for name, module in modules.items():
                handles.append(module.register_forward_pre_hook(accumulate(name)))
        generator = torch.Generator("cpu").manual_seed(seed)
        pipe(list(prompts), height=height, width=width, num_inference_steps=steps, guidance_scale=guidance,
             generator=generator, output_type="latent")
    finally:
        for handle in handles:
            handle.remove()
    return {name: s.sqrt() for name, s in sums.items()}
