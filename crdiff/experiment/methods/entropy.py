"""`entropy`: attention-entropy scaling (Jin et al. 2023) on self-attention only."""

from __future__ import annotations

import math
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook

from crdiff.amplify import drop_hooks
from crdiff.experiment.methods.base import Method, train_resolution, unet_of
from crdiff.models import Resolution

ENTROPY_HOOK = "crdiff_entropy_scaling"


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


class Entropy(Method):
    """Self-attention logits scaled for the target's token count against the training resolution's."""

    name = "entropy"

    def settings(self, resolution: Resolution | None = None) -> dict[str, Any]:
        return {"train_resolution": str(train_resolution(self.run))}

    def apply(self, pipe, resolution: Resolution) -> None:
        train = train_resolution(self.run)
        apply_entropy_scaling(unet_of(pipe, self.name), train.height * train.width / (resolution.height * resolution.width))

    @classmethod
    def remove(cls, pipe) -> None:
        if getattr(pipe, "unet", None) is not None:
            remove_entropy_scaling(pipe.unet)
