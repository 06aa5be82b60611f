"""The baseline every practitioner tries first: generate at the model's training size, then resize.

`native_resize` draws each image at a *bucket* — the training resolution, or for a target of another
aspect ratio the trained size closest in aspect — and brings it to the target with `fit`: a centred
crop to the target's aspect ratio, then one Lanczos resample. It never changes the denoiser, so its
cost is one dense pass per step at the bucket's size (docs/native_resize.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from crdiff.models import Resolution

# SDXL's published multi-aspect training buckets (Podell et al. 2023, appendix: ~1 MP, sides multiples
# of 64, aspect 1:4 ... 4:1), height x width. The portrait half mirrors the landscape half.
_SDXL_LANDSCAPE = ((512, 2048), (512, 1984), (512, 1920), (512, 1856), (576, 1792), (576, 1728), (576, 1664),
                   (640, 1600), (640, 1536), (704, 1472), (704, 1408), (704, 1344), (768, 1344), (768, 1280),
                   (832, 1216), (832, 1152), (896, 1152), (896, 1088), (960, 1088), (960, 1024))
SDXL_BUCKETS = tuple(Resolution(h, w) for h, w in _SDXL_LANDSCAPE + ((1024, 1024),)
                     + tuple((w, h) for h, w in reversed(_SDXL_LANDSCAPE)))
MAX_ASPECT = 4.0  # no bucket more elongated than SDXL's most extreme one (1:4)
FIT = "center-crop+lanczos"  # the resize rule, by name: it joins the run key of native_resize


def area_buckets(train: Resolution, multiple: int) -> tuple[Resolution, ...]:
    """Sizes of the training area with sides multiples of `multiple`: for each height h, the width
    closest to area / h (SD1.5 / SD2.1 / the miniature, trained on one square size)."""
    area = train.height * train.width
    out = []
    for h in range(multiple, area // multiple + 1, multiple):
        w = multiple * round(area / (h * multiple))
        if w >= multiple and max(h / w, w / h) <= MAX_ASPECT:
            out.append(Resolution(h, w))
    return tuple(out)


def bucket(target: Resolution, buckets: Sequence[Resolution], train: Resolution) -> Resolution:
    """The bucket closest to `target` in aspect ratio (log scale); ties: closest in area to `train`,
    then the lower height. A target with the training aspect gets the training size itself."""
    if not buckets:
        raise ValueError("no buckets to choose from")
    area = train.height * train.width

    def distance(b: Resolution) -> tuple[float, int, int]:
        aspect = abs(math.log(b.height / b.width) - math.log(target.height / target.width))
        return round(aspect, 12), abs(b.height * b.width - area), b.height

    return min(buckets, key=distance)


@dataclass(frozen=True)
class NativeRule:
    """Where native_resize draws: the model's `train`ing resolution and the `buckets` it picks from."""

    train: Resolution
    buckets: tuple[Resolution, ...]

    def size(self, target: Resolution) -> Resolution:
        return bucket(target, self.buckets, self.train)


def fit(image: Image.Image | np.ndarray, target: Resolution) -> Image.Image | np.ndarray:
    """`image` cropped about its centre to the target's aspect ratio (the least crop that matches it),
    then resampled to `target` with Lanczos; returned unchanged when it already has the target size.

    A float array (HxWxC in [0, 1], a pipeline's `output_type="np"`) is fit through its 8-bit picture, as
    the PNG would be; one holding NaN stays all NaN, so the run's image checks still count it.
    """
    if isinstance(image, np.ndarray):
        if image.shape[:2] == (target.height, target.width):
            return image
        if np.isnan(image).any():
            return np.full((target.height, target.width, image.shape[-1]), np.nan, dtype=image.dtype)
        picture = Image.fromarray((image * 255).round().astype("uint8"))
        return np.asarray(fit(picture, target), dtype=np.float32) / 255
    if (image.height, image.width) == (target.height, target.width):
        return image
    return ImageOps.fit(image, (target.width, target.height), method=Image.Resampling.LANCZOS, centering=(0.5, 0.5))


def pipeline_changes(pipe: Any) -> list[str]:
    """What has been done to this pipeline's denoiser since loading (CR-Diff, FreeU, other hooks)."""
    from crdiff.amplify import denoiser_of, is_crdiff

    denoiser = denoiser_of(pipe)
    changes = ["CR-Diff (apply_crdiff)"] if is_crdiff(pipe) else []
    if any(getattr(block, "b1", None) is not None for block in getattr(denoiser, "up_blocks", ())):
        changes.append("FreeU (enable_freeu)")
    if any(hasattr(m, "_parent") for m in denoiser.modules()):  # the class hidiffusion swapped in keeps its own
        changes.append("HiDiffusion (apply_hidiffusion)")
    hooked = [name for name, m in denoiser.named_modules()
              if any(h.startswith("crdiff_") for h in getattr(getattr(m, "_diffusers_hook", None), "hooks", {}))]
    if hooked and not changes:  # crdiff's other hooks (e.g. entropy scaling); diffusers' offloading is fine
        changes.append(f"crdiff hooks on {hooked[0] or 'the denoiser'}" + (f" and {len(hooked) - 1} more" if len(hooked) > 1 else ""))
    return changes


def check_unchanged(pipe: Any, method: str = "native_resize") -> None:
    """native_resize (or HiDiffusion) is defined on the pipeline as loaded: a changed denoiser is refused,
    not combined.

    The changes crdiff makes are tuned for the *target* resolution (CR-Diff's ratios and k are searched
    per resolution, entropy scaling reads the target's token count): run at the bucket instead, they
    would make a third method that no table defines, under native_resize's name.
    """
    changes = pipeline_changes(pipe)
    if changes:
        raise ValueError(f"{method} draws with the dense pipeline, but this one is changed: {', '.join(changes)}; "
                         "remove it first (crdiff.remove_crdiff(pipe), pipe.disable_freeu()). CR-Diff and "
                         f"{method} are alternatives for one target size, not a combination")


def native_resize(pipe: Any, target: Resolution, rule: NativeRule, **call: Any) -> list[Image.Image]:
    """Images for `target` from the dense `pipe`: drawn at `rule.size(target)` with the pipeline
    arguments `call` (prompt, generator, steps, ...), then `fit` to `target`."""
    check_unchanged(pipe)
    size = rule.size(target)
    images = pipe(height=size.height, width=size.width, **call).images
    return [fit(image, target) for image in images]
