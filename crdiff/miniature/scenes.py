"""The scenes miniature: procedural scenes of 1-3 coloured shapes with exact ground truth, and their captions.

A scene is drawn from a seed alone (`scene(seed)`), so any image of the data can be rebuilt from its
number. Geometry is kept in units of the image (centres as fractions of height and width, sizes as a
fraction of the shorter side), so one scene renders at any HxW: shapes keep their form, the layout
stretches with the aspect, and objects never touch at any aspect (checked on the unit square, where
distances are shortest). Captions state what is there, grouped by kind: "two red circles and a blue
square". The model trained on them (`model=scenes`, `scripts/train_scenes.py`) sits in SDXL's regime;
the detector that reads images back is `crdiff.miniature.scenes_detect`.
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle")
COLOURS = {"red": (214, 39, 40), "green": (44, 160, 44), "blue": (31, 90, 200)}
BACKGROUND = (255, 255, 255)
COUNT_WORDS = ("a", "two", "three")  # "a" for one: the caption reads "a red circle"; "three" reads a duplication
# 1-2 objects, drawn large: the first recipe (1-3 objects of 0.22-0.30) reached composition 0.40 at 2,200 of
# 3,000 steps, and its objects at 24x32 (5-7 pixels) were too small for a 4x VAE to keep
# (results/miniature_scenes/attempts.md).
MAX_OBJECTS = 2
SIZE = 64  # the training resolution (a 16x16 latent with the 4x VAE)
SIZE_RANGE = (0.26, 0.34)  # side / diameter as a fraction of the shorter side
GAP = 0.06  # the least free space between two objects' bounding circles, fraction of the shorter side
MARGIN = 0.04
SUPERSAMPLE = 4  # drawn 4x larger then area-averaged: anti-aliased edges, as a decoder draws them
EVAL_FIRST_SEED = 10**9  # evaluation scenes: far from the training stream (seeds 0, 1, 2, ...)

ASSETS = Path(__file__).resolve().parents[1] / "assets"
PIPELINE_DIR = ASSETS / "scenes-t2i"
ENCODER_FILE = ASSETS / "scene-encoder.safetensors"
TRAIN_COMMAND = "python scripts/train_scenes.py"

Kind = tuple[str, str]  # (colour, shape)
KINDS: tuple[Kind, ...] = tuple((c, s) for c in COLOURS for s in SHAPES)


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    y: float  # centre, fraction of the height
    x: float  # centre, fraction of the width
    size: float  # fraction of the shorter side

    @property
    def kind(self) -> Kind:
        return self.colour, self.shape


@dataclass(frozen=True)
class Scene:
    objects: tuple[Shape, ...]

    @property
    def kinds(self) -> Counter:
        return Counter(o.kind for o in self.objects)

    @property
    def caption(self) -> str:
        return caption(self.kinds)


def _bounding_radius(size: float) -> float:
    return size * math.sqrt(2) / 2  # a square's (and the triangle's, drawn in the same box) half-diagonal


def scene(seed: int) -> Scene:
    """The scene of number `seed`: 1 to MAX_OBJECTS objects, each of a uniform colour and shape, placed without touching."""
    rng = random.Random(seed)
    count = rng.randint(1, MAX_OBJECTS)
    objects: list[Shape] = []
    while len(objects) < count:  # each object placed by rejection: a few tries at these sizes
        colour, shape, size = rng.choice(tuple(COLOURS)), rng.choice(SHAPES), rng.uniform(*SIZE_RANGE)
        lo, hi = MARGIN + size / 2, 1 - MARGIN - size / 2
        for _ in range(100):
            y, x = rng.uniform(lo, hi), rng.uniform(lo, hi)
            if all(math.dist((y, x), (o.y, o.x)) >= _bounding_radius(size) + _bounding_radius(o.size) + GAP
                   for o in objects):
                objects.append(Shape(colour, shape, y, x, size))
                break
        else:  # no room left for this one: lay the scene out again
            objects.clear()
    return Scene(tuple(objects))


def caption(kinds: Counter) -> str:
    """'two red circles and a blue square': groups in a fixed order (colours, then shapes, as listed)."""
    if not kinds or sum(kinds.values()) > MAX_OBJECTS:
        raise ValueError(f"a caption names 1 to {MAX_OBJECTS} objects, got {dict(kinds)}")
    groups = [f"{COUNT_WORDS[kinds[k] - 1]} {k[0]} {k[1]}{'s' if kinds[k] > 1 else ''}" for k in KINDS if kinds[k]]
    return groups[0] if len(groups) == 1 else ", ".join(groups[:-1]) + " and " + groups[-1]


_GROUP = re.compile(rf"\b({'|'.join(COUNT_WORDS)}|one) ({'|'.join(COLOURS)}) ({'|'.join(SHAPES)})(s?)\b")


def kinds_of(text: str) -> Counter:
    """The objects a caption asks for, {(colour, shape): count}; ValueError for text that is not a caption."""
    groups = _GROUP.findall(text.lower())
    rest = _GROUP.sub("", text.lower()).replace(",", " ").replace(" and ", " ").strip()
    if not groups or rest:
        raise ValueError(f"prompt {text!r} is not a scenes caption (e.g. 'two red circles and a blue square'); "
                         f"the scenes metrics need one")
    wanted: Counter = Counter()
    for word, colour, shape, plural in groups:
        n = 1 if word in ("a", "one") else COUNT_WORDS.index(word) + 1
        if (n > 1) != bool(plural) or (colour, shape) in wanted:
            raise ValueError(f"prompt {text!r}: '{word} {colour} {shape}{plural}' is not a well-formed group")
        wanted[(colour, shape)] = n
    return wanted


def _polygon(o: Shape, height: int, width: int) -> tuple[str, list]:
    cy, cx, half = o.y * height, o.x * width, o.size * min(height, width) / 2
    if o.shape == "circle":
        return "ellipse", [cx - half, cy - half, cx + half, cy + half]
    if o.shape == "square":
        return "rectangle", [cx - half, cy - half, cx + half, cy + half]
    return "polygon", [(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)]  # apex up, fills half its box


def render(s: Scene, height: int = SIZE, width: int = SIZE) -> np.ndarray:
    """The scene as uint8 [height, width, 3], anti-aliased by area-averaging a 4x larger drawing."""
    from PIL import Image, ImageDraw

    big = Image.new("RGB", (width * SUPERSAMPLE, height * SUPERSAMPLE), BACKGROUND)
    draw = ImageDraw.Draw(big)
    for o in s.objects:
        kind, points = _polygon(o, height * SUPERSAMPLE, width * SUPERSAMPLE)
        getattr(draw, kind)(points if kind == "polygon" else [round(v) for v in points], fill=COLOURS[o.colour])
    return np.asarray(big.resize((width, height), Image.BOX))


def batch(seeds: list[int], height: int = SIZE, width: int = SIZE) -> torch.Tensor:
    """Scenes as float [B, 3, height, width] in [-1, 1] (the VAE's input range)."""
    pixels = np.stack([render(scene(s), height, width) for s in seeds])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def prompts(n: int, first_seed: int = EVAL_FIRST_SEED) -> list[str]:
    """The captions of scenes first_seed, first_seed + 1, ...: the evaluation prompts."""
    return [scene(first_seed + i).caption for i in range(n)]


def reference_files(folder: Path, count: int) -> list[str]:
    """Evaluation scenes 0..count-1 drawn at the training size as PNG files (the `scene_fd` reference of
    `prompts=scenes`: image i is the scene whose caption is prompt i), written once."""
    from PIL import Image

    folder = Path(folder)
    paths = [folder / f"scene_{EVAL_FIRST_SEED + i}.png" for i in range(count)]
    missing = [(i, p) for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        folder.mkdir(parents=True, exist_ok=True)
    for i, path in missing:
        tmp = path.with_suffix(".tmp.png")
        Image.fromarray(render(scene(EVAL_FIRST_SEED + i))).save(tmp)
        tmp.replace(path)
    return [str(p) for p in paths]
