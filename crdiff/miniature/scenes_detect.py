"""The scenes detector: reads the objects back from an image, by colour segmentation and shape by geometry.

1. Every pixel is explained as a blend of the white background and one palette colour,
   `pixel = a * colour + (1 - a) * background`: `a` (its coverage by that colour, capped at 1) is the
   projection on the background-to-colour line, allowed up to `MAX_SHADE` (a decoder draws some objects
   darker than their colour), and the colour is the one whose blend leaves the smallest residual.
   Pixels no blend explains (residual above `MAX_RESIDUAL`) belong to no colour.
2. Pixels covered at least half by one colour form objects: 4-connected components per colour, joined
   by the dark off-palette ink they touch (a decoder's brownish corners: shape, not colour). A component
   smaller than `MIN_AREA` (well under the smallest object the data draws), or made mostly of such ink,
   is no object.
3. Shape by geometry, from two moments of the coverage about its centroid that an isotropic blur shrinks
   but never flips (see `_moments`): an apex-up triangle's mass leans to its base (negative vertical
   skewness), a square's reaches out along its diagonals (negative four-fold anisotropy), a disc has
   neither. So soft edges and rounded corners, as a decoder draws them, still read as their shape.
   (A first version fitted sharp shape templates: exact on the data, but it read the trained model's
   soft triangles and rounded squares as circles; `results/miniature_scenes/detector.md`.)

Nothing here comes from the data code path (`scenes.render`): the test checks it on hand-drawn images.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from crdiff.miniature.scenes import BACKGROUND, COLOURS, SHAPES

MAX_RESIDUAL = 60.0  # RGB distance from the nearest background-colour blend: beyond it, no palette colour
MAX_SHADE = 1.6  # a decoder draws some objects darker than their palette colour: up to this far along the line
MIN_AREA = 0.008  # fraction of the shorter side squared (the smallest object drawn: 0.024)
TRIANGLE_SKEW = -0.25  # sharp triangle -0.57, circle and square 0
SQUARE_ANISOTROPY = -0.2  # sharp square -0.43, circle 0


@dataclass(frozen=True)
class Found:
    colour: str
    shape: str
    y: float  # centroid, pixels
    x: float
    area: float  # fraction of the shorter side squared
    skew: float  # vertical skewness of its coverage (triangle < 0)
    anisotropy: float  # four-fold anisotropy of its coverage (square < 0)

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
        a = np.clip(((background - pixels) @ direction) / (direction @ direction), 0.0, MAX_SHADE)
        covers.append(np.minimum(a, 1.0))
        residuals.append(np.linalg.norm(pixels - (background - a[..., None] * direction), axis=-1))
    best = np.argmin(residuals, axis=0)
    cover = np.take_along_axis(np.stack(covers), best[None], 0)[0]
    residual = np.take_along_axis(np.stack(residuals), best[None], 0)[0]
    return np.where(residual <= MAX_RESIDUAL, best, -1), cover


def _moments(weights: np.ndarray, cy: float, cx: float) -> tuple[float, float]:
    """(vertical skewness, four-fold anisotropy) of a coverage-weighted region about its centroid.

    Skewness E[v^3] / E[v^2]^1.5 (v downwards): an apex-up triangle's mass grows towards its base, -0.57
    for a sharp one; a circle's and a square's are 0. Anisotropy E[r^4 cos 4theta] / E[r^4]
    = E[u^4 - 6u^2v^2 + v^4] / E[(u^2 + v^2)^2]: a disc's is 0, an axis-aligned square's -0.43 (its mass
    reaches out along the diagonals). Both keep their sign under an isotropic blur, which only shrinks
    them: a decoder's soft edges and rounded corners move them towards 0 but not past it."""
    ys, xs = np.nonzero(weights)
    w = weights[ys, xs] / weights[ys, xs].sum()
    v, u = ys + 0.5 - cy, xs + 0.5 - cx
    skew = (w * v**3).sum() / max((w * v**2).sum(), 1e-12) ** 1.5
    anisotropy = (w * (u**4 - 6 * u**2 * v**2 + v**4)).sum() / max((w * (u**2 + v**2) ** 2).sum(), 1e-12)
    return float(skew), float(anisotropy)


def shape_of(skew: float, anisotropy: float) -> str:
    """The shape whose moments these are: triangle below `TRIANGLE_SKEW`, else square below `SQUARE_ANISOTROPY`."""
    if skew < TRIANGLE_SKEW:
        return "triangle"
    return "square" if anisotropy < SQUARE_ANISOTROPY else "circle"


def detect(image: np.ndarray) -> list[Found]:
    """The objects in a uint8 [H, W, 3] image, largest first."""
    from scipy import ndimage

    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"detect takes one RGB image [H, W, 3], got shape {image.shape}")
    height, width = image.shape[:2]
    unit = min(height, width) ** 2
    label, cover = coverage(image)
    # Off-palette ink (a decoder's brownish corners, a blend of two colours) explains no colour, but it
    # is part of the object it touches: it joins that object's shape, not its colour.
    palette = np.asarray(list(COLOURS.values()), dtype=np.float64)
    background = np.asarray(BACKGROUND, dtype=np.float64)
    scale = np.linalg.norm(background - palette, axis=-1).mean()
    ink = np.clip(np.linalg.norm(background - image.astype(np.float64), axis=-1) / scale, 0.0, 1.0)
    stray = (label == -1) & (ink >= 0.5)
    found = []
    for index, colour in enumerate(COLOURS):
        own = label == index
        components, n = ndimage.label((own & (cover >= 0.5)) | stray)
        for c in range(1, n + 1):
            body = components == c
            # edge pixels (covered < 1/2) belong to the object too: one pixel around its body
            region = ndimage.binary_dilation(body) & (own | stray) & ~((components > 0) & ~body)
            weights = np.where(region, np.where(own, cover, ink), 0.0)
            area = weights.sum()
            if area < MIN_AREA * unit or np.where(region & own, cover, 0.0).sum() < area / 2:
                continue  # a speck, or stray ink with a fringe of this colour
            ys, xs = np.nonzero(region)
            cy = (weights[ys, xs] * (ys + 0.5)).sum() / area
            cx = (weights[ys, xs] * (xs + 0.5)).sum() / area
            skew, anisotropy = _moments(weights, cy, cx)
            found.append(Found(colour, shape_of(skew, anisotropy), cy, cx, area / unit, skew, anisotropy))
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
