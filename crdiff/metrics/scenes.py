"""Miniature metrics for the scenes model, named as such: analogues, not the paper's metrics.

The four exact ones read each image with the scenes detector (`crdiff.miniature.scenes_detect`) and
compare the objects found with the ones its caption asks for; each is a per-image score:

* `scene_composition`: 1 if every asked kind (colour + shape) is there in its asked count and nothing
  else is (the analogue of CLIP score, exact);
* `scene_count_error`: |objects found - objects asked|;
* `scene_duplication`: 1 if some asked kind appears more often than asked (the repetition failure);
* `scene_missing`: 1 if some asked kind appears less often than asked.

`scene_fd` is a Fréchet distance on the penultimate features (64-d) of the scene encoder crdiff trained
on real scenes (the analogue of FID; the reference is real scenes drawn at the training size, 64x64;
the encoder resizes every image to 64x64).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from crdiff.metrics.base import MeanScore
from crdiff.metrics.fid import FID

DETECTOR_METRICS = ("scene_composition", "scene_count_error", "scene_duplication", "scene_missing")


def _encoder(name: str) -> list:
    from crdiff.miniature import scenes
    from crdiff.weights import LocalFiles

    return [LocalFiles(f"metric {name}: the shipped scene encoder", (scenes.ENCODER_FILE,),
                       "git checkout -- crdiff/assets (it ships with crdiff), or rebuild it: "
                       f"`{scenes.TRAIN_COMMAND}`")]


class SceneFD(FID):
    name = "scene_fd"

    @classmethod
    def needs(cls, **_) -> list:
        return _encoder(cls.name)

    def __init__(self, encoder=None, device: str = "cpu") -> None:
        from crdiff.miniature import scenes_encoder

        encoder = encoder if encoder is not None else scenes_encoder.load_encoder()
        super().__init__(feature=scenes_encoder.SceneFeatures(encoder), feature_name="scene-encoder64",
                         device=device)


class _DetectorScore(MeanScore):
    """A per-image score from the detector's reading of the image against its caption."""

    reading = ""  # the `scenes_detect.Reading` property scored

    @classmethod
    def needs(cls, **_) -> list:
        return []  # the detector is geometry: no weights

    def __init__(self, device: str = "cpu") -> None:
        super().__init__()

    def score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        from crdiff.miniature.scenes import kinds_of

        for p in prompts:  # a prompt that is no caption fails before any image is read
            kinds_of(p)
        values = [getattr(read_once(np.asarray(im.convert("RGB")), p), self.reading) for im, p in zip(images, prompts)]
        return torch.tensor([float(v) for v in values], dtype=torch.float64)


_READINGS: dict[tuple, object] = {}  # (pixels digest, shape, caption) -> the detector's reading
_READINGS_MAX = 50_000


def read_once(pixels: np.ndarray, caption: str):
    """The detector's reading of one image against its caption, read once for the four detector metrics
    (each scores the same images; the detector is a pure function of pixels and caption)."""
    import hashlib

    from crdiff.miniature.scenes_detect import read

    key = (hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=16).digest(), pixels.shape, caption)
    if key not in _READINGS:
        if len(_READINGS) >= _READINGS_MAX:
            _READINGS.clear()
        _READINGS[key] = read(pixels, caption)
    return _READINGS[key]


class SceneComposition(_DetectorScore):
    name, reading = "scene_composition", "correct"


class SceneCountError(_DetectorScore):
    name, reading, higher_is_better = "scene_count_error", "count_error", False


class SceneDuplication(_DetectorScore):
    name, reading, higher_is_better = "scene_duplication", "duplicated", False


class SceneMissing(_DetectorScore):
    name, reading, higher_is_better = "scene_missing", "missing", False


CLASSES = {c.name: c for c in (SceneFD, SceneComposition, SceneCountError, SceneDuplication, SceneMissing)}
