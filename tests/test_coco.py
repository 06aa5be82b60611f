"""COCO-5K sampling equals REF's procedure on a synthetic annotation file."""

import csv
import json
import random

from crdiff.experiment.coco import coco_image_name, sample_coco
from crdiff.experiment.prompts import load_prompts

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("prepare_coco5k", Path(__file__).parents[1] / "scripts/prepare_coco5k.py")
prepare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(prepare)


def synthetic_coco(tmp_path, n_images=5300, missing_every=97):
    """Annotations interleaved (ids appear out of order, repeated), some image files missing."""
    rng = random.Random(7)
    ids = rng.sample(range(1, 600_000), n_images)
    annotations = []
    for rnd in range(5):  # each image gets 4-6 captions, spread over the file
        for image_id in ids if rnd % 2 == 0 else reversed(ids):
            if rnd < 4 or image_id % 3 == 0:
                annotations.append({"image_id": image_id, "id": len(annotations), "caption": f"img {image_id} cap {rnd}"})
    (tmp_path / "captions.json").write_text(json.dumps({"annotations": annotations}))
    images = tmp_path / "val2014"
    images.mkdir()
    for n, image_id in enumerate(ids):
        if n % missing_every:
            (images / coco_image_name(image_id)).touch()
    return tmp_path / "captions.json", images, annotations


def test_sample_matches_reference_procedure(tmp_path):
    captions_json, images, annotations = synthetic_coco(tmp_path)
    # REF, written out independently
    order, caps = [], {}
    for a in annotations:
        if a["image_id"] not in caps:
            order.append(a["image_id"])
            caps[a["image_id"]] = []
        caps[a["image_id"]].append(a["caption"])
    random.seed(42)
    chosen = random.sample(order, 5000)
    want = {}
    for i, image_id in enumerate(chosen):
        if (images / f"COCO_val2014_{image_id:012d}.jpg").exists():
            want[f"prompt_{i}"] = random.choice(caps[image_id])
    random.seed()

    sample = sample_coco(captions_json, images)
    assert dict(zip(sample.ids, sample.prompts)) == want
    assert list(want) == sample.ids and sample.missing == 5000 - len(want) > 0

    out = tmp_path / "coco5k"
    assert prepare.main(["--captions", str(captions_json), "--images", str(images), "--out", str(out)]) == 0
    prompts = load_prompts("csv", str(out / "prompts.csv"))
    assert list(prompts.ids) == list(want) and list(prompts.prompts) == list(want.values())
    assert len((out / "reference_images.txt").read_text().split()) == len(want)
    with (out / "prompts.csv").open() as f:
        assert next(csv.reader(f)) == ["id", "prompt", "image_id", "image_path"]
    assert prepare.main(["--captions", str(captions_json), "--images", str(images), "--out", str(out), "--strict"]) == 2
