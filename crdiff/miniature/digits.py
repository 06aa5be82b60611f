"""The miniature: scikit-learn's bundled handwritten digits, their prompts, and the project's digit classifier.

The digits model (`model=digits`) is a small latent text-to-image model of Stable Diffusion's classes
that crdiff trains itself at 32x32 (`scripts/train_tiny_t2i.py`); the classifier scores it with the
miniature metrics (`crdiff.metrics.digits`). Everything here works offline: the data ship with
scikit-learn, the weights with this package.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
REAL_COUNT = 1797  # scikit-learn's digits
SIZE = 32  # the training resolution of the digits model and the classifier's input size
ASSETS = Path(__file__).resolve().parents[1] / "assets"
PIPELINE_DIR = ASSETS / "digits-t2i"
CLASSIFIER_FILE = ASSETS / "digit-classifier.safetensors"
TRAIN_COMMAND = "python scripts/train_tiny_t2i.py"

# Training captions; evaluation uses the first. "{word}" is the digit's name, "{digit}" its numeral.
TEMPLATES = ("a handwritten digit {word}", "the number {word}", "a handwritten {digit}",
             "a picture of the digit {word}")


def prompt(digit: int, template: str = TEMPLATES[0]) -> str:
    return template.format(word=WORDS[digit], digit=digit)


def digit_of(text: str) -> int:
    """The digit a prompt asks for (its single digit name or numeral); ValueError if none or several."""
    found = {WORDS.index(w) for w in re.findall(r"[a-z]+", text.lower()) if w in WORDS}
    found |= {int(d) for d in re.findall(r"(?<![\d.])\d(?![\d.])", text)}
    if len(found) != 1:
        raise ValueError(f"prompt {text!r} names {'no' if not found else 'several'} digit(s); the miniature "
                         "metrics need exactly one (e.g. 'a handwritten digit seven')")
    return found.pop()


def real_digits(size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 scikit-learn digits as dark ink on white, bicubic-upscaled from 8x8: ([N,1,size,size] in
    [0,1], labels [N])."""
    from sklearn.datasets import load_digits

    data = load_digits()
    ink = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    ink = F.interpolate(ink, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return 1.0 - ink, torch.tensor(data.target, dtype=torch.long)


def reference_files(folder: Path) -> list[str]:
    """The real digits as PNG files (the FID reference of `prompts=digits`), written once."""
    from PIL import Image

    folder = Path(folder)
    paths = [folder / f"digit_{i:04d}.png" for i in range(REAL_COUNT)]
    if not all(p.is_file() for p in paths):  # decode and upscale the digits only when files are missing
        images, _ = real_digits()
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (images[:, 0] * 255).round().to(torch.uint8).numpy()
        for path, array in zip(paths, pixels):
            tmp = path.with_suffix(".tmp.png")
            Image.fromarray(array, mode="L").convert("RGB").save(tmp)
            tmp.replace(path)
    return [str(p) for p in paths]


def to_gray(images: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """uint8 [0,255] or float [0,1] images [B,C,H,W] (any size, 1 or 3 channels) -> [B,1,size,size] in [0,1]."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if x.shape[1] == 3:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


class DigitClassifier(nn.Module):
    """A small CNN on 32x32 grey digits; `features` (64-d, the penultimate layer) feed the miniature FID."""

    num_features = 64

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((1, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 4 * 4, self.num_features), nn.ReLU())
        self.head = nn.Linear(self.num_features, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(to_gray(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class DigitFeatures(nn.Module):
    """The classifier's penultimate features as an FID extractor (torchmetrics passes images unchanged)."""

    def __init__(self, classifier: DigitClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images).double()


def load_classifier(path: str | Path = CLASSIFIER_FILE) -> DigitClassifier:
    """The shipped digit classifier (eval mode); a clear error naming the fix if its file is missing."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the digit classifier {str(path)!r} is missing; rebuild it with `{TRAIN_COMMAND}`")
    model = DigitClassifier()
    model.load_state_dict(load_file(path))
    return model.eval().requires_grad_(False)
