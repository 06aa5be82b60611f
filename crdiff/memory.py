"""Memory at large sizes (Table C): the peak each image cost, how its VAE decode ran, and whether POA's
batched call fits. docs/config.md, "Memory at large sizes", states the rules and their assumptions.

- Peak memory: on CUDA the allocator's max allocated bytes, reset at each batch, so a job's peak is the
  largest over its batches; on a CPU the process's peak RSS (`ru_maxrss`), a high-water mark of the
  whole process since it started, not of one job.
- VAE decode (`vae_decode`: auto | whole | sliced | tiled): `auto` estimates the decode's memory from
  the image size and, on CUDA only, slices (one image at a time) when it exceeds free memory; it never
  tiles (a tiled image differs): `tiled` is set by the user for a whole table.
- POA (`amplify.batched`: true | false | auto): `auto` on CUDA measures one branch's activations on the
  first call of each input shape (run sequentially) and batches later calls if twice that fits.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch

VAE_DECODE = ("auto", "whole", "sliced", "tiled")
# An assumption, not a measurement: a decode holds about this many activations of its widest full-size
# block (block_out_channels[0] channels at HxW) at once; scripts/bench_table_c.py records the real peaks.
DECODE_TENSORS = 10
# POA auto batches when free memory holds both branches' activations with this margin.
MARGIN = 1.1

_carried: dict[torch.device, int] = {}  # peaks read before a mid-batch reset (POA's measurement)


# ---- peak memory ---------------------------------------------------------------------------------
def reset_peak(device: torch.device) -> None:
    """Start a new peak window on `device` (CUDA only; a CPU's peak RSS cannot be reset)."""
    if device.type == "cuda":
        _carried.pop(device, None)
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> tuple[int, str]:
    """(bytes, what they are) since the last `reset_peak`: CUDA's max allocated, else the process's peak RSS."""
    if device.type == "cuda":
        return max(_carried.get(device, 0), torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss * (1 if sys.platform == "darwin" else 1024), "process_peak_rss"  # Linux counts KiB, macOS bytes


def _restart_window(device: torch.device) -> None:
    """Reset CUDA's peak counter mid-batch, keeping what it had reached for `peak`."""
    _carried[device] = max(_carried.get(device, 0), torch.cuda.max_memory_allocated(device))
    torch.cuda.reset_peak_memory_stats(device)


def available(device: torch.device) -> int:
    """Bytes a CUDA allocation can still get: the driver's free memory plus what torch's cache holds unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


# ---- VAE decode ----------------------------------------------------------------------------------
def decode_bytes(vae, height: int, width: int, batch: int) -> int:
    """Estimated memory of decoding `batch` images of HxW (see DECODE_TENSORS). A half-precision VAE that
    asks for it (`force_upcast`, SDXL's) decodes in fp32, as the pipelines do."""
    upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
    itemsize = 4 if upcast else vae.dtype.itemsize
    return batch * height * width * vae.config.block_out_channels[0] * itemsize * DECODE_TENSORS


def choose_decode(vae, device: torch.device, height: int, width: int, batch: int, switch: str = "auto") -> str:
    """`whole`, `sliced` or `tiled`: the switch if forced; under `auto`, whole on a CPU, and on CUDA
    sliced when the batch's estimate does not fit free memory. `auto` never tiles: a tiled image is a
    different image, and free memory differs between ranks, methods and batches, so an automatic tiling
    would mix decodes inside one table. Where one image does not fit, set `vae_decode=tiled` for the table."""
    if switch not in VAE_DECODE:
        raise ValueError(f"vae_decode is {switch!r}; valid choices: {list(VAE_DECODE)}")
    if switch != "auto":
        return switch
    if device.type != "cuda":
        return "whole"
    need, free = decode_bytes(vae, height, width, batch), available(device)
    return "whole" if need <= free or batch == 1 else "sliced"  # sliced: whole's values to 1e-6


@contextmanager
def vae_decode(pipe, mode: str) -> Iterator[None]:
    """The pipeline's VAE in `mode` while inside, then as it was (tiling also slices the batch)."""
    vae = pipe.vae
    if mode != "whole" and not hasattr(vae, "use_tiling"):
        raise ValueError(f"vae_decode={mode} needs a VAE with slicing and tiling; {type(vae).__name__} has none")
    before = (getattr(vae, "use_slicing", False), getattr(vae, "use_tiling", False))
    if hasattr(vae, "use_tiling"):
        vae.use_slicing, vae.use_tiling = mode in ("sliced", "tiled"), mode == "tiled"
    try:
        yield
    finally:
        if hasattr(vae, "use_tiling"):
            vae.use_slicing, vae.use_tiling = before


# ---- POA's batched call --------------------------------------------------------------------------
def measure_branch(call, device: torch.device):
    """(call's result, the activation bytes it allocated above what was allocated before it), on CUDA."""
    before = torch.cuda.memory_allocated(device)
    _restart_window(device)
    out = call()
    return out, torch.cuda.max_memory_allocated(device) - before


def batched_fits(branch_bytes: int, free_bytes: int) -> bool:
    """The batched call holds both branches' activations at once: it fits if twice one branch does."""
    return 2 * branch_bytes * MARGIN <= free_bytes
