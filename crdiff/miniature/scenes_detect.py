"""The scenes detector: reads the objects back from an image, by colour segmentation and shape by geometry.

1. Every pixel is explained as a blend of the white background and one palette colour,
   `pixel = a * colour + (1 - a) * background`: `a` (its coverage by that colour) is the projection on
   the background-to-colour line, and the colour is the one whose blend leaves the smallest residual.
   Pixels no blend explains (residual above `MAX_RESIDUAL`) belong to no colour.
2. Pixels covered at least half by one colour form objects: 4-connected components per colour. A
   component smaller than `MIN_AREA` (well under the smallest object the data draws) is a speck, not
   an object.
3. Shape by geometry: each component's coverage (sub-pixel area, edges included) is compared with a
   circle, a square and an apex-up triangle of the same area and centroid, drawn on the same pixel
   grid; the shape that fits best (least absolute coverage difference) is the reading.

Nothing here comes from the data code path (`scenes.render`): the test checks it on hand-drawn images.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from crdiff.miniature.scenes import BACKGROUND, COLOURS, SHAPES

MAX_RESIDUAL = 60.0  # RGB distance from the nearest background-colour blend: beyond it, no palette colour
MIN_AREA = 0.008  # fraction of the shorter side squared (the smallest object drawn: 0.024)
_SUB = 4  # sub-samples per pixel side when drawing the shape hypotheses


@dataclass(frozen=True)
class Found:
    colour: str
    shape: str
    y: float  # centroid, pixels
    x: float
    area: float  # fraction of the shorter side squared
    misfit: float  # the best hypothesis's coverage difference, as a fraction of the area

    @property
    def kind(self) -> tuple[str, str]:
        return self.colour, self.shape


def coverage(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: the palette colour explaining it best (index into COLOURS, -1 for none) and its coverage."""
    pixels = image.astype(np.float64)
    background = np.asarray(BACKGROUND, dtype=np.float64)
    covers, residuals = [], []
    for colour in COLOURS.values():
        direction = background - np.asarray(colour, dtype=np.float64)
        a = np.clip(((background - pixels) @ direction) / (direction @ direction), 0.0, 1.0)
        covers.append(a)
        residuals.append(np.linalg.norm(pixels - (background - a[..., None] * direction), axis=-1))
    best = np.argmin(residuals, axis=0)
    cover = np.take_along_axis(np.stack(covers), best[None], 0)[0]
    residual = np.take_along_axis(np.stack(residuals), best[None], 0)[0]
    return np.where(residual <= MAX_RESIDUAL, best, -1), cover


def _hypothesis(shape: str, area: float, cy: float, cx: float, window: tuple[slice, slice]) -> np.ndarray:
    """Coverage of `shape` with this area and centroid on the pixel grid of `window` (pixel centres at +0.5)."""
    ys = np.arange(window[0].start, window[0].stop)[:, None] + (np.arange(_SUB)[None] + 0.5) / _SUB
    xs = np.arange(window[1].start, window[1].stop)[:, None] + (np.arange(_SUB)[None] + 0.5) / _SUB
    y, x = ys.reshape(-1)[:, None], xs.reshape(-1)[None, :]
    if shape == "circle":
        inside = (y - cy) ** 2 + (x - cx) ** 2 <= area / np.pi
    elif shape == "square":
        half = np.sqrt(area) / 2
        inside = (np.abs(y - cy) <= half) & (np.abs(x - cx) <= half)
    else:  # apex up, base = height = s; the centroid sits s/6 below the box's centre
        s = np.sqrt(2 * area)
        top = cy - s / 2 - s / 6
        inside = (y >= top) & (y <= top + s) & (np.abs(x - cx) <= (y - top) / 2)
    h, w = ys.shape[0], xs.shape[0]
    return inside.reshape(h, _SUB, w, _SUB).mean(axis=(1, 3))


def detect(image: np.ndarray) -> list[Found]:
    """The objects in a uint8 [H, W, 3] image, largest first."""
    from scipy import ndimage

    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"detect takes one RGB image [H, W, 3], got shape {image.shape}")
    height, width = image.shape[:2]
    unit = min(height, width) ** 2
    label, cover = coverage(image)
    found = []
    for index, colour in enumerate(COLOURS):
        components, n = ndimage.label((label == index) & (cover >= 0.5))
        for c in range(1, n + 1):
            core = components == c
            # the component's edge pixels (covered < 1/2) belong to it too: one pixel around its core
            region = ndimage.binary_dilation(core) & (label == index) & ~((components > 0) & ~core)
            weights = np.where(region, cover, 0.0)
            area = weights.sum()
            if area < MIN_AREA * unit:
                continue
            ys, xs = np.nonzero(region)
            cy = (weights[ys, xs] * (ys + 0.5)).sum() / area
            cx = (weights[ys, xs] * (xs + 0.5)).sum() / area
            reach = int(np.ceil(np.sqrt(2 * area))) + 2
            window = (slice(max(0, int(cy) - reach), min(height, int(cy) + reach + 1)),
                      slice(max(0, int(cx) - reach), min(width, int(cx) + reach + 1)))
            observed = weights[window]
            misfits = {s: np.abs(_hypothesis(s, area, cy, cx, window) - observed).sum() / area for s in SHAPES}
            shape = min(misfits, key=misfits.get)
            found.append(Found(colour, shape, cy, cx, area / unit, misfits[shape]))
    return sorted(found, key=lambda f: -f.area)


def kinds(image: np.ndarray) -> Counter:
    """{(colour, shape): count} of the objects found."""
    return Counter(f.kind for f in detect(image))


@dataclass(frozen=True)
class Reading:
    """One image's objects found against its caption's, and the exact miniature metrics they give."""
    wanted: Counter
    found: Counter

    @property
    def correct(self) -> bool:
        """Composition: every kind in its asked count, nothing else."""
        return +self.found == +self.wanted

    @property
    def count_error(self) -> int:
        return abs(sum(self.found.values()) - sum(self.wanted.values()))

    @property
    def duplicated(self) -> bool:
        """More instances of an asked kind than asked: the repetition failure."""
        return any(self.found[k] > n for k, n in self.wanted.items())

    @property
    def missing(self) -> bool:
        """Fewer instances of an asked kind than asked."""
        return any(self.found[k] < n for k, n in self.wanted.items())


def read(image: np.ndarray, caption: str) -> Reading:
    from crdiff.miniature.scenes import kinds_of

    return Reading(kinds_of(caption), kinds(image))
