"""Generate one image per prompt with per-image seeds; skip what exists; write atomically.

Image i of a prompt set is drawn from `torch.Generator("cpu").manual_seed(seed + i)`: its noise depends
on neither batch size, rank count, device nor method, so dense and CR-Diff start from the same noise.
(The batch size still changes float rounding in batched matmuls: about 1e-6, one uint8 level on
<0.1% of pixels in tests/test_run.py; rank count changes nothing.)

Each image's metadata also records its cost: denoiser passes per image, counted while it was drawn,
wall seconds per image (its batch's time / batch size) with the device, its batch's peak memory
(crdiff.memory: CUDA's max allocated, or the process's peak RSS on a CPU), how the VAE decoded it and
how POA's branches ran. Cost is measured, never keyed: an image skipped on a rerun keeps the cost
measured when it was made.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from crdiff import memory
from crdiff.amplify import branches_used, denoiser_of
from crdiff.experiment.checks import flag
from crdiff.experiment.config import SamplerConfig
from crdiff.experiment.results import device_name
from crdiff.models import Resolution
from crdiff.native import NativeRule, native_resize
from crdiff.experiment.prompts import PromptSet
from crdiff import atomic

log = logging.getLogger(__name__)


def set_scheduler(pipe, name: str | None) -> None:
    """Swap the pipeline's scheduler by name (keeping its noise schedule); None keeps the default."""
    if name is None:
        return
    import diffusers

    classes = {"ddim": diffusers.DDIMScheduler, "euler": diffusers.EulerDiscreteScheduler,
               "euler_a": diffusers.EulerAncestralDiscreteScheduler,
               "dpmpp_2m": diffusers.DPMSolverMultistepScheduler, "pndm": diffusers.PNDMScheduler}
    pipe.scheduler = classes[name].from_config(pipe.scheduler.config)


def image_path(folder: Path, index: int) -> Path:
    return folder / f"{index:05d}.png"


def meta_path(folder: Path, index: int) -> Path:
    return folder / f"{index:05d}.json"


def image_meta(prompts: PromptSet, index: int, seed: int) -> dict:
    return {"index": index, "id": prompts.ids[index], "prompt": prompts.prompts[index], "seed": seed + index}


def is_done(folder: Path, prompts: PromptSet, index: int, seed: int) -> bool:
    """An image counts as done only if its metadata matches and the PNG decodes fully."""
    image, meta = image_path(folder, index), meta_path(folder, index)
    if not (image.exists() and meta.exists()):
        return False
    try:
        want, stored = image_meta(prompts, index, seed), json.loads(meta.read_text())
        if {k: stored.get(k) for k in want} != want:  # beside the identity: flag (checks.py) and cost
            log.warning("%s: metadata does not match this run; regenerating", meta)
            return False
        with Image.open(image) as im:
            im.load()
        return True
    except (OSError, ValueError, SyntaxError) as err:
        log.warning("%s is corrupt (%s); regenerating it", image, err)
        return False


# A job's folder records the images it found complete once all of them existed, so a later launch (and
# each of its ranks) recognises a finished job without decoding every PNG again (over NFS: W x the output).
DONE = ".done.json"


def identity(prompts: PromptSet, index: int, seed: int) -> str:
    """Short hash of what image `index` is (id, prompt, seed), as its metadata records it."""
    return hashlib.sha256(json.dumps(image_meta(prompts, index, seed), sort_keys=True).encode()).hexdigest()[:12]


def verified(folder: Path) -> list[str]:
    """Identities of the images found complete when the job last finished (empty if never)."""
    try:
        return list(json.loads((folder / DONE).read_text())["images"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def recorded(folder: Path, prompts: PromptSet, index: int, seed: int) -> str | None:
    """What DONE records of image `index` as it is on disk: its identity and its PNG's byte size (a file
    truncated or rewritten since no longer matches, and is then decoded), or None if it is missing."""
    try:
        return f"{identity(prompts, index, seed)}:{image_path(folder, index).stat().st_size}"
    except OSError:
        return None


def mark_done(folder: Path, prompts: PromptSet, seed: int) -> None:
    """Record that images 0..n-1 are complete (kept when a longer run of the same prompts recorded more)."""
    have, mine = verified(folder), [recorded(folder, prompts, i, seed) for i in range(len(prompts))]
    if have[: len(mine)] != mine:
        atomic.write_json(folder / DONE, {"images": mine})


# The denoiser's input layer: every pass goes through it exactly once, with one row per sample, also
# inside CR-Diff's POA hook (which calls the denoiser's forward, not the module, for its pruned branch).
INPUT_LAYERS = ("conv_in", "pos_embed", "x_embedder")  # UNet, SD3, FLUX


@contextmanager
def denoiser_passes(pipe) -> Iterator[list[int]]:
    """Count the samples the denoiser evaluates while inside (`[n]`): each CFG half and each POA branch
    of an image counts once, so batch size and `amplify.batched` do not change the count."""
    denoiser = denoiser_of(pipe)
    layer = next((getattr(denoiser, name) for name in INPUT_LAYERS if hasattr(denoiser, name)), None)
    if layer is None:
        raise ValueError(f"cannot count passes of {type(denoiser).__name__}: it has none of {INPUT_LAYERS}")
    count = [0]

    def add(module, args) -> None:
        count[0] += args[0].shape[0]

    handle = layer.register_forward_pre_hook(add)
    try:
        yield count
    finally:
        handle.remove()


def decode(pipe, prompts: PromptSet, indices: list[int], resolution: Resolution, sampler: SamplerConfig,
           native: NativeRule | None = None, extra: dict | None = None) -> list:
    """The images `indices` of `prompts` as decoded (float HxWxC in [0, 1], NaN kept), in batches of
    `sampler.batch_size`, seeds `seed + i`; with a `native` rule, drawn at its bucket and fit to `resolution`;
    `extra`: more arguments of the pipeline call (a method's, e.g. SDXL's size conditioning)."""
    images = []
    for start in range(0, len(indices), sampler.batch_size):
        batch = indices[start : start + sampler.batch_size]
        # None (REF's CR-Diff script): no negative prompt; SDXL then zeroes the negative embedding, "" encodes it
        negative = None if sampler.negative_prompt is None else [sampler.negative_prompt] * len(batch)
        call = dict(
            prompt=[prompts.prompts[i] for i in batch], negative_prompt=negative,
            num_inference_steps=sampler.steps, guidance_scale=sampler.guidance,
            generator=[torch.Generator("cpu").manual_seed(sampler.seed + i) for i in batch], output_type="np",
            **(extra or {}),
        )
        if native is None:
            images += list(pipe(height=resolution.height, width=resolution.width, **call).images)
        else:
            images += native_resize(pipe, resolution, native, **call)
    return images


def to_pil(pixels: np.ndarray) -> Image.Image:
    """What the pipeline's `output_type="pil"` returns for the same array (diffusers' numpy_to_pil)."""
    with np.errstate(invalid="ignore"):  # NaN becomes 0; checks.flag has recorded it
        return Image.fromarray((pixels * 255).round().astype("uint8"))


def draw(pipe, prompts: PromptSet, indices: list[int], resolution: Resolution, sampler: SamplerConfig,
         native: NativeRule | None = None) -> list:
    """The images `indices` of `prompts` (PIL), in batches of `sampler.batch_size`, seeds `seed + i`."""
    return [to_pil(pixels) for pixels in decode(pipe, prompts, indices, resolution, sampler, native)]


def generate(
    pipe, prompts: PromptSet, indices: list[int], resolution: Resolution, sampler: SamplerConfig, folder: Path,
    progress: Callable[[int], None] = lambda n: None, native: NativeRule | None = None, extra: dict | None = None,
    vae_decode: str = "auto",
) -> int:
    """Make and store the images `indices` (the caller has skipped the done ones); returns how many.
    `vae_decode`: whole | sliced | tiled | auto (crdiff.memory.choose_decode, at the size drawn)."""
    device = device_name(pipe.device)
    drawn = native.size(resolution) if native else resolution
    for start in range(0, len(indices), sampler.batch_size):
        batch = indices[start : start + sampler.batch_size]
        vae = memory.choose_decode(pipe.vae, pipe.device, drawn.height, drawn.width, len(batch), vae_decode)
        branches_used(pipe)  # count this batch's POA calls only
        memory.reset_peak(pipe.device)
        began = time.perf_counter()
        with denoiser_passes(pipe) as passes, memory.vae_decode(pipe, vae):
            decoded = decode(pipe, prompts, batch, resolution, sampler, native, extra)
        seconds = (time.perf_counter() - began) / len(batch)
        peak, peak_kind = memory.peak(pipe.device)
        cost = {"denoiser_calls": passes[0] / len(batch), "seconds": seconds, "device": device,
                "peak_memory_bytes": peak, "peak_memory": peak_kind, "vae_decode": vae,
                "poa": "+".join(branches_used(pipe)) or None}
        for i, pixels in zip(batch, decoded):
            buffer = io.BytesIO()
            to_pil(pixels).save(buffer, format="PNG")
            atomic.write_bytes(image_path(folder, i), buffer.getvalue())
            meta = {**image_meta(prompts, i, sampler.seed), "flag": flag(pixels), "cost": cost}
            atomic.write_json(meta_path(folder, i), meta)  # written last: "done"
        progress(len(batch))
    return len(indices)


def cost(folder: Path, indices: list[int]) -> dict:
    """Mean denoiser passes and seconds per image over the images `indices` that recorded them, the
    device(s) that measured the seconds, the largest peak memory in GiB and what it measured, and how
    the VAE decode and POA's branches ran (None where no image recorded it, e.g. made before they were)."""
    costs = []
    for i in indices:
        path = meta_path(folder, i)
        if path.exists():
            costs.append(json.loads(path.read_text()).get("cost"))
    costs = [c for c in costs if c]
    if not costs:
        return {"denoiser_calls": None, "seconds_per_image": None, "seconds_device": None, "peak_memory_gib": None,
                "peak_memory": None, "vae_decode": None, "poa_branches": None}

    def kinds(name: str) -> str | None:  # e.g. "whole", or "sliced + whole" when batches differed
        found = sorted({part for c in costs if c.get(name) for part in c[name].split("+")})
        return " + ".join(found) or None

    peaks = [c["peak_memory_bytes"] for c in costs if c.get("peak_memory_bytes") is not None]
    return {"denoiser_calls": sum(c["denoiser_calls"] for c in costs) / len(costs),
            "seconds_per_image": sum(c["seconds"] for c in costs) / len(costs),
            "seconds_device": " + ".join(sorted({c["device"] for c in costs})),
            "peak_memory_gib": max(peaks) / 2**30 if peaks else None, "peak_memory": kinds("peak_memory"),
            "vae_decode": kinds("vae_decode"), "poa_branches": kinds("poa")}


def sheet(rows: list[list[Image.Image]]) -> Image.Image:
    """Images pasted row by row, left to right (rows may differ in length and image size)."""
    width = max(sum(im.width for im in row) for row in rows)
    heights = [max(im.height for im in row) for row in rows]
    out = Image.new("RGB", (width, sum(heights)), "white")
    for r, row in enumerate(rows):
        x = 0
        for image in row:
            out.paste(image.convert("RGB"), (x, sum(heights[:r])))
            x += image.width
    return out


def grid(folder: Path, indices: list[int], columns: int = 4) -> Image.Image | None:
    """A grid of the first images of a job (None if it has none)."""
    images = [Image.open(image_path(folder, i)).convert("RGB") for i in indices if image_path(folder, i).exists()]
    if not images:
        return None
    return sheet([images[start : start + columns] for start in range(0, len(images), columns)])
