"""The scenes miniature's first measurement: dense at the training size (64x64) and at SDXL's hard sizes
scaled down (32x32: 0.5x each side, as 1024 -> 512; 24x32: 400x560; 32x24: 480x360), read by the detector.

    python scripts/scenes_failure.py                 # the shipped model, 200 prompts, ~2 min on 2 idle cores
    python scripts/scenes_failure.py --work .cache/train_scenes --prompts 50 --sizes 64x64   # a run mid-training

Writes to --out (default results/miniature_scenes/): failure.csv (one row per image: its reading by the
detector), failure.md (each reading's mean with a 95% bootstrap interval over prompts, per size; the
detector's own accuracy on real scenes at each size), grid_failure.png (one row per size, same prompts
and seeds). The detector's accuracy must be near 1 at a size for that size's readings to mean anything.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

import torch

from crdiff.experiment.results import cpu_name
from crdiff.miniature import scenes, scenes_study
from crdiff.models import Resolution

SIZES = ("64x64", "32x32", "24x32", "32x24")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="a training run's work folder: its last checkpoint")
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--detector-scenes", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("results/miniature_scenes"))
    args = parser.parse_args()
    sizes = [Resolution.parse(s) for s in args.sizes]  # a bad size fails here, before the model loads
    if not 1 <= args.prompts <= 2000:
        parser.error(f"--prompts must be 1..2000 (the evaluation prompts), got {args.prompts}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)

    if args.work is not None:
        from crdiff.miniature.scenes_train import checkpoint_pipeline

        pipe, step = checkpoint_pipeline(args.work)
        model = f"checkpoint of {args.work} at UNet step {step}"
    else:
        from crdiff import ModelUnavailableError, load_pipeline

        try:  # the model first: a missing one is one line naming the fix, before any other work
            pipe, model = load_pipeline("scenes"), "model=scenes (crdiff/assets/scenes-t2i)"
        except ModelUnavailableError as err:
            parser.exit(1, f"scenes_failure.py: {err}\n")
    detector = {str(s): scenes_study.detector_accuracy(s, args.detector_scenes) for s in sizes}
    ceiling = {str(s): scenes_study.vae_ceiling(pipe.vae, s, args.detector_scenes) for s in sizes}
    prompts = scenes.prompts(args.prompts)
    rows, images_by_size, seconds = [], {}, {}
    for size in sizes:
        start = time.perf_counter()
        images = scenes_study.generate(pipe, prompts, size, args.seed, args.steps, args.guidance, args.batch_size)
        seconds[str(size)] = time.perf_counter() - start
        rows += scenes_study.score(images, prompts, size, args.seed)
        images_by_size[str(size)] = images
        logging.info("%s: %d images in %.0f s", size, len(images), seconds[str(size)])

    scenes_study.write_csv(args.out / "failure.csv", rows)
    scenes_study.grid(images_by_size, args.out / "grid_failure.png")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report = "\n".join([
        "# Scenes miniature: the failure first (dense)", "",
        f"- command: `{' '.join(['python scripts/scenes_failure.py', *sys.argv[1:]])}`",
        f"- model: {model}; commit {commit or '?'}, {cpu_name()}, torch {torch.__version__}",
        f"- {args.prompts} evaluation prompts (image i: prompt i, seed {args.seed} + i, the same at every size), "
        f"DDIM {args.steps} steps, guidance {args.guidance}",
        "- readings: composition (every asked kind in its count, nothing else), count error |found - asked|, "
        "duplication (an asked kind more often than asked), missing (an asked kind less often); "
        "mean [95% bootstrap interval over prompts]", "",
        scenes_study.table(rows, sizes), "",
        "Detector accuracy on real scenes drawn at each size "
        f"({args.detector_scenes} evaluation scenes): "
        + ", ".join(f"{s} {a:.3f}" for s, a in detector.items()), "",
        "The same scenes after the model's VAE (encode, decode), read by the detector: the ceiling of any "
        "image decoded at that size: " + ", ".join(f"{s} {a:.3f}" for s, a in ceiling.items()), "",
        "Seconds per size (this machine, shared): " + ", ".join(f"{s} {t:.0f}" for s, t in seconds.items()),
        "", "Grid: `grid_failure.png`, one row per size in the order above, the first 8 prompts.", ""])
    (args.out / "failure.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
