"""Build the COCO-5K prompt CSV and reference-image list (REF sampling, docs/method.md §4).

    python scripts/prepare_coco5k.py --captions annotations/captions_val2014.json --images val2014/ --out data/coco5k
Writes <out>/prompts.csv (id, prompt, image_id, image_path) used by `prompts=coco5k`, and
<out>/reference_images.txt (the FID reference, one path per line).
"""

import argparse
import logging
import sys
from pathlib import Path

from crdiff.experiment.coco import sample_coco
from crdiff.experiment.prompts import write_prompt_csv


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", required=True, help="captions_val2014.json")
    parser.add_argument("--images", required=True, help="folder holding COCO_val2014_*.jpg")
    parser.add_argument("--out", default="data/coco5k")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--strict", action="store_true", help="fail if any sampled image file is missing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    for path in (args.captions, args.images):
        if not Path(path).exists():
            print(f"prepare_coco5k: error: {path} does not exist", file=sys.stderr)
            return 2
    sample = sample_coco(args.captions, args.images, args.n)
    if args.strict and sample.missing:
        print(f"prepare_coco5k: error: {sample.missing} sampled images are missing", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_prompt_csv(out / "prompts.csv", sample.ids, sample.prompts,
                     {"image_id": sample.image_ids, "image_path": sample.image_paths})
    (out / "reference_images.txt").write_text("\n".join(sample.image_paths) + "\n")
    print(f"{len(sample.prompts)} prompts ({sample.missing} missing images) -> {out}/prompts.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
