"""scene_fd between real scenes: the floor a perfect generator would score at each sample size and size.

    python scripts/scene_fd_floor.py                 # writes results/miniature_scenes/scene_fd_floor.md (~1 min)

The reference is what `prompts=scenes` uses: evaluation scenes 0..n-1 drawn at 64x64. Compared: the same
scenes (0 by construction), then n other evaluation scenes (n..2n-1) drawn at 64x64 and at each smaller
evaluated size (the encoder resizes every image to 64x64, so drawing small and upsampling costs by itself).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image

from crdiff.metrics import build_metric
from crdiff.miniature import scenes
from crdiff.models import Resolution


def images(first: int, n: int, size: Resolution) -> list[Image.Image]:
    return [Image.fromarray(scenes.render(scenes.scene(scenes.EVAL_FIRST_SEED + i), size.height, size.width))
            for i in range(first, first + n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, nargs="+", default=[500, 2000], help="images per set")
    parser.add_argument("--sizes", nargs="+", default=["64x64", "32x32", "24x32", "32x24"])
    parser.add_argument("--out", type=Path, default=Path("results/miniature_scenes/scene_fd_floor.md"))
    args = parser.parse_args()
    sizes = [Resolution.parse(s) for s in args.sizes]
    if not all(2 <= n <= 2000 for n in args.n):
        parser.error(f"--n: 2..2000 images per set (the evaluation prompts), got {args.n}")
    fd = build_metric("scene_fd")
    rows = {}
    for n in args.n:
        fd.reset()
        fd.update_reference(images(0, n, Resolution(64, 64)))
        reference = fd.reference()
        rows[("the same scenes", n)] = fd.value(reference, fd.features(images(0, n, Resolution(64, 64))))
        for size in sizes:
            rows[(f"{n} other real scenes drawn at {size}", n)] = fd.value(reference, fd.features(images(n, n, size)))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = ["# Scenes miniature: scene_fd between real scenes (the floor)", "",
             f"- `python scripts/scene_fd_floor.py`; the shipped scene encoder; commit {commit}, "
             f"{platform.machine()}, {date.today()}",
             "- reference: evaluation scenes 0..n-1 drawn at 64x64 (as `prompts=scenes`); compared: the same scenes, "
             "then evaluation scenes n..2n-1 drawn at each size (the encoder resizes every image to 64x64)", "",
             "| compared set | " + " | ".join(f"n = {n}" for n in args.n) + " |", "|---|" + "---|" * len(args.n)]
    for label in dict.fromkeys(k[0].replace(f"{k[1]} other", "n other") for k in rows):
        values = [rows.get((label.replace("n other", f"{n} other"), n)) for n in args.n]
        lines.append(f"| {label} | " + " | ".join(f"{abs(v) if abs(v) < 5e-4 else v:.3f}" for v in np.asarray(values, float)) + " |")
    lines += ["", "A model's scene_fd at a size is read against this row, not against 0: drawing real scenes "
              "smaller and upsampling them costs by itself.", ""]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
