"""Derive results/bench/throughput.csv rows from the recorded UNet / transformer benchmarks.

    python scripts/throughput_from_bench.py > results/bench/throughput.csv

Each row is one image's denoiser time over the benchmark's timed steps (CFG batch 2 for the UNets and
SD3, batch 1 for FLUX): `kind=unet_calls`, a lower bound on a whole job (no text encoders, VAE decode,
PNG writes or metrics). Whole-job measurements go in the same file with `kind=job` (docs/throughput.md).
"""

import csv
import json
import re
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "results" / "bench"
COLUMNS = ["model", "resolution", "dtype", "method", "device_name", "steps", "seconds_per_image", "kind", "source"]
# benchmark mode -> the run's method it times (amplify.batched=true is the default crdiff)
MODES = {"dense": "dense", "poa_batched": "crdiff", "poa": "crdiff_sequential"}
STEPS = {"core": 10, "dit": 1}  # bench_core times 10 steps per image; bench_dit reports one call


def rows():
    for path in sorted(BENCH.glob("*_NVIDIA-*.json")):
        match = re.fullmatch(r"(core|dit)_(\w+?)_(\d+x\d+)_(fp16|bf16|fp32)_(.+)", path.stem)
        if not match:
            continue
        bench, model, resolution, dtype, _ = match.groups()
        data = json.loads(path.read_text())
        device = data.get("machine") or data.get("gpu")
        for entry in data.get("modes") or data.get("rows"):
            if entry["mode"] in MODES:
                per_step = entry.get("s_per_step") or entry["s_per_call"]
                yield {"model": model, "resolution": resolution, "dtype": dtype, "method": MODES[entry["mode"]],
                       "device_name": device, "steps": STEPS[bench],
                       "seconds_per_image": round(per_step * STEPS[bench], 5), "kind": "unet_calls",
                       "source": f"derived from {path.name} ({entry['mode']}, denoiser calls only)"}


if __name__ == "__main__":
    writer = csv.DictWriter(sys.stdout, COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows())
