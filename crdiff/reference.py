"""REF's two-copy form of CR-Diff (a deep copy of the UNet masked in place), for tests and benchmarks.

This is what `crdiff.amplify` replaces: it holds two full UNets in memory. Not used by the product.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def pruned_copy(unet: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """A deep copy of `unet` with every masked weight zeroed in place (REF's pruned UNet)."""
    pruned = copy.deepcopy(unet)
    with torch.no_grad():
        for name, keep in masks.items():
            pruned.get_submodule(name).weight.mul_(keep.to(pruned.get_submodule(name).weight.dtype))
    return pruned


def two_copy_forward(dense: nn.Module, pruned: nn.Module, k: float):
    """A forward with REF's formula `(1 - k) · dense + k · pruned` over two separate UNets."""
    dense_forward = dense.forward

    def forward(*args, **kwargs):
        out, other = dense_forward(*args, **kwargs), pruned(*args, **kwargs)
        if isinstance(out, tuple):
            return ((1 - k) * out[0] + k * other[0], *out[1:])
        out.sample = (1 - k) * out.sample + k * other.sample
        return out

    return forward
