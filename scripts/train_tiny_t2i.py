"""Train the miniature text-to-image model and the digit classifier that ship inside crdiff.

    python scripts/train_tiny_t2i.py            # ~13 min on 2 CPU cores; rewrites crdiff/assets/
    python scripts/train_tiny_t2i.py --out /tmp/digits --unet-steps 50   # a quick look elsewhere

Data: scikit-learn's bundled digits (offline). Bit-deterministic on one machine for a fixed --threads (default 2, the
threads the shipped weights were trained with). Prints and records timings and the classifier's
held-out accuracy in --report (default results/miniature/training.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
from pathlib import Path

from crdiff.experiment.results import cpu_name
from crdiff.miniature import digits
from crdiff.miniature.train import TrainConfig, train


def main() -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=digits.ASSETS, help="folder for digits-t2i/ and the classifier")
    parser.add_argument("--report", type=Path, default=Path("results/miniature/training.json"))
    for name in ("seed", "threads", "classifier_steps", "vae_steps", "unet_steps", "batch_size", "vae_batch_size"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k not in ("out", "report")})
    report = train(cfg, args.out / digits.PIPELINE_DIR.name, args.out / digits.CLASSIFIER_FILE.name)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report.update(config={k: v for k, v in vars(cfg).items() if k != "unet"}, commit=commit or None,
                  machine=cpu_name(), threads=cfg.threads)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
