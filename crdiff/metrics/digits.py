"""Miniature metrics for the digits model, named as such: they are analogues, not the paper's metrics.

* `digit_fid`: Fréchet distance between the project's digit classifier's penultimate features (64-d)
  of generated and real digits (the analogue of FID; the reference is scikit-learn's 1,797 digits).
* `digit_accuracy`: the share of images the classifier reads as the digit their prompt names (the
  analogue of CLIP score: does the image follow the text?).
"""

from __future__ import annotations

import torch
from PIL import Image

from crdiff.metrics.base import MeanScore
from crdiff.metrics.fid import FID, to_uint8


def _classifier(name: str) -> list:
    from crdiff.miniature import digits
    from crdiff.weights import LocalFiles

    return [LocalFiles(f"metric {name}: the shipped digit classifier", (digits.CLASSIFIER_FILE,),
                       "git checkout -- crdiff/assets (it ships with crdiff)")]


class DigitFID(FID):
    name = "digit_fid"

    @classmethod
    def needs(cls, **_) -> list:
        return _classifier(cls.name)

    def __init__(self, classifier=None, device: str = "cpu") -> None:
        from crdiff.miniature import digits

        classifier = classifier if classifier is not None else digits.load_classifier()
        super().__init__(feature=digits.DigitFeatures(classifier), feature_name="digit-classifier64", device=device)


class DigitAccuracy(MeanScore):
    name = "digit_accuracy"

    @classmethod
    def needs(cls, **_) -> list:
        return _classifier(cls.name)

    def __init__(self, classifier=None, device: str = "cpu") -> None:
        from crdiff.miniature import digits

        super().__init__()
        self.classifier = (classifier if classifier is not None else digits.load_classifier()).to(device)
        self.device = device

    def score(self, images: list[Image.Image], prompts: list[str]) -> torch.Tensor:
        from crdiff.miniature.digits import digit_of

        wanted = torch.tensor([digit_of(p) for p in prompts])
        predicted = self.classifier(to_uint8(images).to(self.device)).argmax(1).cpu()
        return (predicted == wanted).double()
