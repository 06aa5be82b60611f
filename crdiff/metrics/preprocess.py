"""Image preprocessing before every metric, real and generated images alike (part of the run key)."""

from __future__ import annotations

from PIL import Image

PREPROCESSING = ("stretch256", "center_crop_lanczos256")


def preprocess(image: Image.Image, mode: str = "stretch256") -> Image.Image:
    """`stretch256`: the paper's protocol (REF), bicubic resize of the whole image to 256x256.
    `center_crop_lanczos256`: largest centred square, Lanczos-resized to 256x256 (no distortion)."""
    image = image.convert("RGB")
    if mode == "stretch256":
        return image.resize((256, 256), Image.BICUBIC)
    if mode == "center_crop_lanczos256":
        w, h = image.size
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        return image.crop((left, top, left + side, top + side)).resize((256, 256), Image.LANCZOS)
    raise ValueError(f"unknown preprocessing {mode!r}; valid choices: {list(PREPROCESSING)}")
