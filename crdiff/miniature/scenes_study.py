"""The scenes miniature's first measurement, "the failure first": dense sampling at the training size and
at SDXL's hard sizes scaled down, every image read by the detector (`scripts/scenes_failure.py`).

Image i uses evaluation prompt i and its own generator seeded `seed + i` (the same at every size), so
sizes are compared on the same prompts and noise seeds. Intervals are percentile bootstraps over
prompts (2,000 resamples of the prompt set, a fixed seed): one seed set, so they cover prompt
variation only.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from crdiff.miniature import scenes
from crdiff.miniature.scenes_detect import read
from crdiff.models import Resolution

READINGS = {"composition": "correct", "count_error": "count_error", "duplication": "duplicated",
            "missing": "missing"}
BOOTSTRAP = 2000


@dataclass(frozen=True)
class Row:
    index: int
    size: str
    seed: int
    prompt: str
    found: str  # the detector's reading, written as a caption ("" for nothing found)
    composition: int
    count_error: int
    duplication: int
    missing: int


def _as_text(found: Counter) -> str:
    if not found:
        return ""
    if sum(found.values()) > scenes.MAX_OBJECTS or max(found.values()) > len(scenes.COUNT_WORDS):
        return "; ".join(f"{n} {c} {s}" for (c, s), n in sorted(found.items()))
    return scenes.caption(found)


def generate(pipe, prompts: list[str], size: Resolution, seed: int, steps: int, guidance: float,
             batch_size: int) -> list:
    """Dense images, one generator per image (seed + i): results do not depend on the batch size."""
    images = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        generators = [torch.Generator().manual_seed(seed + start + j) for j in range(len(chunk))]
        images += pipe(chunk, height=size.height, width=size.width, num_inference_steps=steps,
                       guidance_scale=guidance, generator=generators).images
    return images


def score(images: list, prompts: list[str], size: Resolution, seed: int) -> list[Row]:
    rows = []
    for i, (image, prompt) in enumerate(zip(images, prompts)):
        r = read(np.asarray(image.convert("RGB")), prompt)
        rows.append(Row(i, str(size), seed + i, prompt, _as_text(r.found), int(r.correct), r.count_error,
                        int(r.duplicated), int(r.missing)))
    return rows


def interval(values: np.ndarray, seed: int = 0) -> tuple[float, float, float]:
    """Mean and 95% percentile-bootstrap interval over prompts."""
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (BOOTSTRAP, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def detector_accuracy(size: Resolution, count: int) -> float:
    """The share of evaluation scenes 0..count-1, drawn at `size`, whose objects the detector reads exactly."""
    from crdiff.miniature.scenes_detect import kinds

    right = 0
    for i in range(count):
        s = scenes.scene(scenes.EVAL_FIRST_SEED + i)
        right += kinds(scenes.render(s, size.height, size.width)) == s.kinds
    return right / count


def vae_ceiling(vae, size: Resolution, count: int) -> float:
    """The share of evaluation scenes 0..count-1, drawn at `size`, that the detector still reads exactly after
    the model's own VAE (encode, decode): no image the model decodes at this size can score above it."""
    from crdiff.miniature.scenes_detect import kinds

    drawn = [scenes.scene(scenes.EVAL_FIRST_SEED + i) for i in range(count)]
    x = torch.from_numpy(np.stack([scenes.render(s, size.height, size.width) for s in drawn]))
    x = x.permute(0, 3, 1, 2).to(vae.dtype) / 127.5 - 1
    with torch.no_grad():
        y = torch.cat([vae.decode(vae.encode(b).latent_dist.mean).sample for b in x.split(50)])
    pixels = ((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return float(np.mean([kinds(p) == s.kinds for p, s in zip(pixels, drawn)]))


def write_csv(path: Path, rows: list[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(Row.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(r.__dict__ for r in rows)


def table(rows: list[Row], sizes: list[Resolution]) -> str:
    """Markdown: one line per size, each reading's mean [95% interval]."""
    lines = ["| size | images | " + " | ".join(READINGS) + " |", "|---|---|" + "---|" * len(READINGS)]
    for size in sizes:
        mine = [r for r in rows if r.size == str(size)]
        cells = []
        for name in READINGS:
            mean, lo, hi = interval(np.array([getattr(r, name) for r in mine], dtype=float))
            cells.append(f"{mean:.3f} [{lo:.3f}, {hi:.3f}]")
        lines.append(f"| {size} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid(images_by_size: dict[str, list], path: Path, columns: int = 8, cell: int = 96) -> None:
    """One row per size (the same prompts and seeds across rows), each image scaled to `cell` pixels high."""
    from PIL import Image

    rows = []
    for images in images_by_size.values():
        scaled = [im.resize((round(cell * im.width / im.height), cell), Image.NEAREST) for im in images[:columns]]
        row = Image.new("RGB", (sum(s.width for s in scaled) + 4 * len(scaled), cell), (128, 128, 128))
        x = 0
        for s in scaled:
            row.paste(s, (x, 0))
            x += s.width + 4
        rows.append(row)
    out = Image.new("RGB", (max(r.width for r in rows), (cell + 4) * len(rows)), (128, 128, 128))
    for i, r in enumerate(rows):
        out.paste(r, (0, i * (cell + 4)))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
