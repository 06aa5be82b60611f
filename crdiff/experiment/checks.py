"""Images that are not pictures, counted per job: NaN, black, constant.

`nan`: the decoded image held NaN (fp16 overflow; the PNG shows it as black). `black`: every pixel 0, what
a safety checker puts in place of a flagged image. `constant`: one colour everywhere. Scored, such images
move every metric; each job writes the counts in its row and warns when they are not 0.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("crdiff")
FLAGS = ("nan", "black", "constant")


def flag(pixels: np.ndarray) -> str | None:
    """The flag of one image: float HxWxC in [0, 1] as the pipeline decoded it, or uint8 as stored."""
    if pixels.dtype.kind == "f":
        if np.isnan(pixels).any():
            return "nan"
        pixels = (pixels * 255).round().clip(0, 255).astype(np.uint8)  # as diffusers' numpy_to_pil
    if not pixels.any():
        return "black"
    return "constant" if (pixels == pixels.reshape(-1, pixels.shape[-1])[0]).all() else None


def count(folder: Path, n: int) -> dict[str, int]:
    """`<flag>_images` of images 0..n-1 of a job: from the flag generation wrote beside each image, else
    (images made before flags were written) from the PNG, where NaN reads as black."""
    counts = dict.fromkeys(FLAGS, 0)
    for i in range(n):
        meta, image = folder / f"{i:05d}.json", folder / f"{i:05d}.png"
        if not image.exists():
            continue
        recorded = json.loads(meta.read_text()) if meta.exists() else {}
        if "flag" in recorded:
            found = recorded["flag"]
        else:
            with Image.open(image) as im:
                found = flag(np.asarray(im.convert("RGB")))
        if found is not None:
            counts[found] += 1
    return {f"{name}_images": value for name, value in counts.items()}


def warn(row: dict) -> None:
    """One warning per job whose images are not all pictures."""
    bad = {name: row[f"{name}_images"] for name in FLAGS if row.get(f"{name}_images")}
    if bad:
        log.warning("%s at %s: %s of %d images are not pictures (%s); they are scored as they are",
                    row["method"], row["resolution"], sum(bad.values()), row["n_images"],
                    ", ".join(f"{v} {k}" for k, v in bad.items()))
