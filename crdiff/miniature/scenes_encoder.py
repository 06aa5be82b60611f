"""The scene encoder: a small CNN crdiff trains on real scenes to count each kind of object; its
penultimate features (64-d) feed the miniature Fréchet distance `scene_fd` (the analogue of FID)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from crdiff.miniature import scenes


def to_input(images: torch.Tensor, size: int = scenes.SIZE) -> torch.Tensor:
    """uint8 [0,255] or float [0,1] images [B,3,H,W] of any size -> float [B,3,size,size] in [0,1]."""
    x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


class SceneEncoder(nn.Module):
    """Four conv stages on 64x64 RGB, then 64 features and a head of one count per kind of object."""

    num_features = 64

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((3, 16), (16, 32), (32, 64), (64, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 4 * 4, self.num_features), nn.ReLU())
        self.head = nn.Linear(self.num_features, len(scenes.KINDS))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(to_input(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class SceneFeatures(nn.Module):
    """The encoder's features as an FID extractor (torchmetrics passes images unchanged)."""

    def __init__(self, encoder: SceneEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.num_features = encoder.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encoder.features(images).double()


def load_encoder(path: str | Path = scenes.ENCODER_FILE) -> SceneEncoder:
    """The shipped scene encoder (eval mode); a clear error naming the fix if its file is missing."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the scene encoder {str(path)!r} is missing; rebuild it with "
                                f"`{scenes.TRAIN_COMMAND}`")
    model = SceneEncoder()
    model.load_state_dict(load_file(path))
    return model.eval().requires_grad_(False)
