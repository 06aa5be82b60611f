"""Per-trial overhead of the ratio search beyond sampling and scoring, on SDXL's real UNet (random bf16).

A trial re-derives the pruned weights in place: remove_crdiff + apply_crdiff with a MagnitudeIndex
(histograms built once per search). REF instead reloads the whole pipeline for every trial.
    python scripts/bench_search.py [--device cuda]
"""

import argparse
import json
import platform
import random
import sys
import time
from pathlib import Path

import torch

import crdiff
from crdiff.models import random_unet
from crdiff.pruning import MagnitudeIndex


def now(device: str) -> float:
    """Wall time after the device's queued work is done (CUDA runs asynchronously from the host)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
    return time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--out", default="results/bench")
    args = parser.parse_args()
    unet = random_unet("sdxl", torch.bfloat16, args.device)
    rng = random.Random(0)
    points = [{g: rng.uniform(0.1, 0.8) for g in ("down", "mid", "up")} for _ in range(args.trials)]

    start = now(args.device)
    index = MagnitudeIndex(unet)
    index_s = now(args.device) - start
    trial_s = []
    for ratios in points:
        start = now(args.device)
        crdiff.remove_crdiff(unet)
        crdiff.apply_crdiff(unet, ratios, k=1.5, index=index)
        trial_s.append(now(args.device) - start)
    crdiff.remove_crdiff(unet)
    start = now(args.device)
    crdiff.apply_crdiff(unet, points[0], k=1.5)  # without the index: radix select over all weights
    plain_s = now(args.device) - start

    machine = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
        f"{platform.machine()}, {torch.get_num_threads()} torch threads (CPU)"
    result = {"machine": machine, "index_build_s": index_s, "trial_overhead_s": trial_s,
              "trial_without_index_s": plain_s, "argv": sys.argv[1:]}
    tag = "cpu" if args.device == "cpu" else torch.cuda.get_device_name().replace(" ", "-")
    out = Path(args.out) / f"search_overhead_sdxl_bf16_{tag}"
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(
        f"# Ratio-search overhead per trial, SDXL UNet (real config, random bf16 weights)\n\n"
        f"- machine: {machine}\n- command: `python scripts/bench_search.py {' '.join(sys.argv[1:])}`\n\n"
        f"| step | seconds |\n|---|---|\n| MagnitudeIndex (once per search) | {index_s:.2f} |\n"
        f"| trial overhead: remove + apply with the index (median of {len(trial_s)}) | "
        f"{sorted(trial_s)[len(trial_s) // 2]:.4f} |\n| trial overhead without the index | {plain_s:.2f} |\n\n"
        "Goal: <= 1 s per trial. Sampling and scoring come on top and are the same for any implementation.\n")
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
