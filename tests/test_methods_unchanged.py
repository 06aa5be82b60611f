"""The methods registry (one class per method) changed no image and no run key of the methods before it.

EXPECTED was written by the code before the registry (commit 1c8bf24, `crdiff/experiment/methods.py` as
if/elif chains) with exactly this test's command on the project's machine kind (2 CPU cores, torch
2.14.1): for each image, its folder `<method>-<images key>/<HxW>` and the first 16 hex digits of the
sha256 of its pixels as stored (uint8 PNG). A method whose images change on purpose changes here in
its own commit, saying why. The image keys changed on purpose twice since (issue 22: images are keyed by
the prompt set before `prompts.limit` cuts it; issue 21: `model.safety_checker` joined ModelConfig, whose
every field joins the key); every pixel hash stayed.
"""

import hashlib

import numpy as np
from PIL import Image

from crdiff.experiment.run import execute

from test_run import compose_run

OLD = ["dense", "crdiff", "bwp", "uniform", "random_mask", "wanda", "freeu", "entropy", "native_resize"]
EXPECTED = {
    "bwp-39cb6400c8/40x72": "771322d1a851d1d5",
    "bwp-39cb6400c8/64x64": "2307665ed3d9f361",
    "crdiff-de141277b2/40x72": "e8f3a3b336944a8c",
    "crdiff-de141277b2/64x64": "20d31db09263ce9c",
    "dense-dd9b38e0dd/40x72": "24127e6981ad9b21",
    "dense-dd9b38e0dd/64x64": "f116d908fd43f4bd",
    "entropy-bde422b83c/40x72": "7b32f0a48da7ad4c",
    "entropy-bde422b83c/64x64": "f116d908fd43f4bd",
    "freeu-62a3090e63/40x72": "d669aa43a6cb0aa3",
    "freeu-62a3090e63/64x64": "fa820d9bd5a8cd6f",
    "native_resize-d05883189c/40x72": "964a138de3575195",
    "native_resize-d05883189c/64x64": "f116d908fd43f4bd",
    "random_mask-25ce355d4a/40x72": "6a7dfa788833f9fc",
    "random_mask-25ce355d4a/64x64": "560e34c7ffe5d84e",
    "uniform-5d0aa5a25b/40x72": "426e4c80d4c110f7",
    "uniform-5d0aa5a25b/64x64": "a6ecb6530cff4a56",
    "wanda-ce041ecb10/40x72": "b3c41ee19cbdeb41",
    "wanda-ce041ecb10/64x64": "307ada90103b5c89",
}


def test_every_old_method_makes_the_same_images_under_the_same_keys(tmp_path):
    execute(compose_run("experiment=smoke", f"output_dir={tmp_path}", f"methods=[{','.join(OLD)}]",
                        "resolutions.unseen=[40x72]", "prompts.limit=1", "metrics=none", "sampler.steps=2",
                        "pruning.ratios={down:0.2,mid:0.3,up:0.4}", "baselines.uniform_ratio=0.25"))
    root = tmp_path / "images" / "tiny-sdxl"
    found = {str(p.parent.relative_to(root)): hashlib.sha256(np.asarray(Image.open(p)).tobytes()).hexdigest()[:16]
             for p in sorted(root.glob("*/*/*.png"))}
    assert found == EXPECTED
