"""The embedded default job: dense vs CR-Diff on a tiny offline pipeline at an unseen resolution.

`python -m crdiff.demo` runs on a CPU in seconds without any download and writes a side-by-side image
plus the per-group sparsity report; `--model sdxl` etc. run the same on real weights.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from PIL import Image

import crdiff
from crdiff.models import MODELS, Resolution

PROMPTS = ["a photograph of an astronaut riding a horse", "a red bicycle leaning on a brick wall"]


def side_by_side(rows: list[list[Image.Image]]) -> Image.Image:
    """Grid of equally sized images, one row per method."""
    w, h = rows[0][0].size
    grid = Image.new("RGB", (w * len(rows[0]), h * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            grid.paste(image, (c * w, r * h))
    return grid


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sdxl", help=f"registry name or path; choices {sorted(MODELS)}")
    parser.add_argument("--resolution", default="40x72", help="HxW, an unseen resolution for the model")
    parser.add_argument("--ratios", default="0.3,0.3,0.3", help="down,mid,up sparsity ratios")
    parser.add_argument("--k", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="outputs/demo")
    args = parser.parse_args(argv)

    # Everything is validated before the model loads.
    res = Resolution.parse(args.resolution)
    ratios = dict(zip(("down", "mid", "up"), (float(r) for r in args.ratios.split(","))))
    config = crdiff.CRDiffConfig(ratios=ratios, k=args.k)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pipe = crdiff.load_pipeline(args.model, device=device)
    rows = []
    for method in ("dense", "crdiff"):
        if method == "crdiff":
            crdiff.apply_crdiff(pipe, config=config)
        start = time.perf_counter()
        images = [
            pipe(prompt, height=res.height, width=res.width, num_inference_steps=args.steps,
                 generator=torch.Generator(device).manual_seed(args.seed + i)).images[0]
            for i, prompt in enumerate(PROMPTS)
        ]
        print(f"{method:>6}: {len(images)} images at {res} in {time.perf_counter() - start:.1f} s")
        rows.append(images)
    report = crdiff.sparsity_report(pipe.unet, crdiff.plan_pruning(pipe.unet, config.ratios, config.criterion))
    crdiff.remove_crdiff(pipe)

    path = out / f"dense_vs_crdiff_{args.model.replace('/', '_')}_{res}.png"
    side_by_side(rows).save(path)
    report.to_csv(out / "sparsity.csv", index=False)
    print(report[report.layer == "(group)"].to_string(index=False))
    print(f"rows: dense (top), CR-Diff k={config.k} (bottom) -> {path}")
    return path


if __name__ == "__main__":
    main()
