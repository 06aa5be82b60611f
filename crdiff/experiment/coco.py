"""COCO-5K prompts with exactly the reference sampling (docs/method.md §4)."""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class CocoSample:
    ids: list[str]          # prompt_{i}, REF's names (gaps where an image file is missing)
    prompts: list[str]
    image_ids: list[int]
    image_paths: list[str]
    missing: int


def coco_image_name(image_id: int, split: str = "val2014") -> str:
    return f"COCO_{split}_{image_id:012d}.jpg"


def sample_coco(captions_json: str | Path, image_dir: str | Path, n: int = 5000, seed: int = 42) -> CocoSample:
    """REF: ids in order of first appearance; random.seed(42); sample n; one random caption per image.

    A missing image file is skipped WITHOUT a draw (so later captions match REF), and counted.
    """
    annotations = json.loads(Path(captions_json).read_text())["annotations"]
    captions: dict[int, list[str]] = {}
    for a in annotations:  # dict keeps first-appearance order; captions stay in annotation order
        captions.setdefault(a["image_id"], []).append(a["caption"])
    all_ids = list(captions)
    if len(all_ids) < n:
        raise ValueError(f"{captions_json} has {len(all_ids)} images; the sample needs {n}")
    rng_state = random.getstate()
    try:
        random.seed(seed)
        chosen = random.sample(all_ids, n)
        sample = CocoSample([], [], [], [], 0)
        for i, image_id in enumerate(chosen):
            path = Path(image_dir) / coco_image_name(image_id)
            if not path.is_file():
                sample.missing += 1
                continue
            sample.ids.append(f"prompt_{i}")
            sample.prompts.append(random.choice(captions[image_id]))
            sample.image_ids.append(image_id)
            sample.image_paths.append(str(path))
    finally:
        random.setstate(rng_state)
    if sample.missing:
        log.warning("%d of %d sampled images are missing under %s; their prompts are skipped as in REF",
                    sample.missing, n, image_dir)
    return sample
