"""Exact selection and bit packing behind the pruning plan (crdiff.pruning), out of the reader's way.

`kth_smallest_abs` finds the paper's group threshold (the k-th smallest |w| over many tensors) exactly,
without concatenating them; `pack_bits` / `unpack_bits` store keep-masks at one bit per weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch


def _int_view_dtype(dtype: torch.dtype) -> torch.dtype:
    return {2: torch.int16, 4: torch.int32, 8: torch.int64}[torch.empty((), dtype=dtype).element_size()]


def _chunks(t: torch.Tensor, size: int = 1 << 24) -> Iterable[torch.Tensor]:
    flat = t.reshape(-1)
    for start in range(0, flat.numel(), size):
        yield flat[start : start + size]


def kth_smallest_abs(
    tensors: list[torch.Tensor] | Callable[[], Iterable[torch.Tensor]], k: int, top: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact k-th smallest |x| (1-based, as `torch.kthvalue`) over many tensors, without concatenating.

    Radix select on the IEEE bit pattern: for x >= 0 the integer view is monotone in the value, so a
    65,536-bin histogram of each 16-bit digit (most significant first) pins the k-th value exactly in
    one pass for fp16/bf16 and two for fp32. Extra memory is one chunk plus the histogram.
    `tensors` may be a callable returning a fresh iterable, so the values can be regenerated per pass.
    `top` is a precomputed histogram of the most significant digit (see `MagnitudeIndex`): with it,
    fp16/bf16 thresholds need no pass over the weights at all.
    """
    tensors_of = tensors if callable(tensors) else lambda: tensors
    meta = [(t.dtype, t.device, t.numel()) for t in tensors_of()]
    dtype, device, _ = meta[0]
    if any(m[0] != dtype for m in meta):
        raise ValueError("all tensors of a group must share one dtype")
    total = sum(m[2] for m in meta)
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside [1, {total}]")
    int_dtype = _int_view_dtype(dtype)
    bits = torch.iinfo(int_dtype).bits
    prefix = 0
    for shift in range(bits - 16, -1, -16):
        if top is not None and shift == bits - 16:
            hist = top.to(device)
        else:
            hist = _digit_histogram(tensors_of(), int_dtype, bits, shift, prefix, device)
        cum = hist.cumsum(0)
        digit = int(torch.searchsorted(cum, torch.tensor(k, device=cum.device)))
        k -= int(cum[digit - 1]) if digit > 0 else 0
        prefix = (prefix << 16) | digit
    signed = prefix - (1 << bits) if prefix >= 1 << (bits - 1) else prefix
    # A 0-dim CPU tensor: usable as a scalar against weights on any device (offloading included)
    return torch.tensor(signed, dtype=int_dtype).view(dtype)


def _digit_histogram(tensors: Iterable[torch.Tensor], int_dtype: torch.dtype, bits: int, shift: int, prefix: int,
                     device) -> torch.Tensor:
    """Histogram of the 16-bit digit at `shift` of |x|'s bit pattern, among values whose higher digits
    equal `prefix`."""
    hist = torch.zeros(1 << 16, dtype=torch.int64, device=device)
    for t in tensors:
        for chunk in _chunks(t.detach()):
            v = chunk.abs().view(int_dtype).to(torch.int64)  # sign bit cleared: v >= 0
            if shift + 16 < bits:
                v = v[(v >> (shift + 16)) == prefix]
            hist += torch.bincount((v >> shift) & 0xFFFF, minlength=1 << 16)
    return hist


def top_digit_histogram(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Histogram of the most significant 16-bit digit of |x| (what `kth_smallest_abs` takes as `top`)."""
    int_dtype = _int_view_dtype(tensors[0].dtype)
    bits = torch.iinfo(int_dtype).bits
    return _digit_histogram(tensors, int_dtype, bits, bits - 16, 0, tensors[0].device)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 tensor holding 8 mask bits per byte (1/8 of a bool mask)."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    flat = torch.cat([flat, flat.new_zeros(pad)]) if pad else flat
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    return (flat.view(-1, 8).to(torch.uint8) * weights).sum(1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of `pack_bits`."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(1) >> shifts) & 1
    return bits.reshape(-1)[: math.prod(shape)].view(shape).bool()
