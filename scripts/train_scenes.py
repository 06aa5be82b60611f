"""Train the scenes miniature (SDXL's UNet layout, 64x64 only) and the scene encoder that ship inside crdiff.

    python scripts/train_scenes.py           # about 65 min on 2 idle CPU cores; rewrites crdiff/assets/scenes-t2i/
    python scripts/train_scenes.py --out /tmp/look --work /tmp/look-work --unet-steps 20   # a quick look

Resumable: run the same command again after a stop and it continues from the last checkpoint in --work
(same weights as one uninterrupted run); --stop-after N ends a run after N UNet steps on purpose.
Bit-deterministic on one machine: the same weights again need the same CPU model and instruction set (torch's
CPU capability; the report's `machine`), torch version and --threads (default 2, the threads the shipped weights
were trained with). Another CPU rounds differently and trains other weights from the same recipe:
scripts/scenes_rebuild.py compares a rebuild with the shipped weights. Train on an idle machine: two OpenMP threads beside other CPU work
spin-wait on each other (10x slower).
Records timings, the encoder's held-out accuracy and the SHA-256 of every weight file written in
--report (default: <out>/training.json when --out is given, else results/miniature_scenes/training.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
from pathlib import Path

from crdiff.experiment.results import cpu_name
from crdiff.miniature import scenes
from crdiff.miniature.scenes_train import TrainConfig, train


ROOT = Path(__file__).resolve().parents[1]
SHIPPED_REPORT = Path("results/miniature_scenes/training.json")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=scenes.ASSETS, help="folder for scenes-t2i/ and the encoder")
    parser.add_argument("--work", type=Path, default=Path(".cache/train_scenes"), help="stages and checkpoints")
    parser.add_argument("--report", type=Path, default=None,
                        help="default: <out>/training.json, or results/miniature_scenes/training.json without --out")
    parser.add_argument("--stop-after", type=int, default=None,
                        help="end this run after this many UNet steps (checkpointed); run again to go on")
    names = ("seed", "threads", "encoder_steps", "vae_steps", "unet_steps", "batch_size", "vae_batch_size",
             "checkpoint_every")
    for name in names:
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--min-snr-gamma", type=float, default=defaults.min_snr_gamma,
                        help="Min-SNR loss weighting's gamma (0: plain epsilon loss, as attempts 1-3)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    cfg = TrainConfig(**{k: getattr(args, k) for k in names}, min_snr_gamma=args.min_snr_gamma)
    pipeline_dir, encoder_file = args.out / scenes.PIPELINE_DIR.name, args.out / scenes.ENCODER_FILE.name
    if args.stop_after is not None and args.stop_after < 1:
        parser.error(f"--stop-after must be >= 1, got {args.stop_after}")
    if args.report is None:  # a rebuild elsewhere keeps the shipped run's report
        args.report = args.out / "training.json" if args.out != scenes.ASSETS else ROOT / SHIPPED_REPORT
    try:
        report = train(cfg, args.work, pipeline_dir, encoder_file, args.stop_after)
    except ValueError as err:  # a work folder of another configuration
        parser.error(str(err))
    if not report["finished"]:
        print(json.dumps(report, indent=1))
        return
    weights = sorted([*pipeline_dir.glob("*/*.safetensors"), *pipeline_dir.glob("*/*.index.json"), encoder_file])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    report.update(config={k: v for k, v in vars(cfg).items() if k not in ("unet", "text_encoder")},
                  sha256={str(p.relative_to(args.out)): sha256(p) for p in weights}, commit=commit or None,
                  machine=cpu_name(), threads=cfg.threads)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
