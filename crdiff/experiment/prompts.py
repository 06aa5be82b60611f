"""Prompt sets: a small built-in set, any CSV with a `prompt` column, and COCO-5K (docs/method.md §4)."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The ratio search's two prompts (docs/method.md §2) first, then everyday scenes in the COCO style.
BUILTIN = [
    "A cat holding a sign that says hello world",
    "A billboard in Times Square showing the text 'FUTURE IS NOW' in bold neon letters",
    "A man riding a horse on a beach at sunset",
    "A bowl of fruit on a wooden kitchen table",
    "A red double-decker bus driving down a city street",
    "Two dogs playing with a frisbee in a park",
    "A lighthouse on a rocky coast under a stormy sky",
    "A plate of pasta with tomatoes and basil",
]
DIGIT_PROMPTS = 1000
SCENE_PROMPTS = 2000  # the scenes miniature: 2,000 images for its Fréchet distance


@dataclass(frozen=True)
class PromptSet:
    """An ordered list of prompts with stable ids; image i of a run uses prompt i and seed + i."""

    name: str
    prompts: tuple[str, ...]
    ids: tuple[str, ...]
    image_paths: tuple[str, ...] | None = None  # real images (FID reference), e.g. COCO-5K; any number
    # content hash of the whole set before `prompts.limit` cut it: the images' key, so the first 500
    # images of a 5,000-prompt run are the images of the 500-prompt run
    source: str = ""

    def __post_init__(self) -> None:
        if not self.prompts:
            raise ValueError(f"prompt set '{self.name}' is empty")
        blank = [i for i, p in enumerate(self.prompts) if not p.strip()]
        if blank:
            raise ValueError(f"prompt set '{self.name}' has empty prompts at rows {blank[:10]}")
        seen: dict[str, int] = {}
        for i, pid in enumerate(self.ids):
            if pid in seen:
                raise ValueError(f"prompt set '{self.name}' has duplicate id {pid!r} (rows {seen[pid]} and {i})")
            seen[pid] = i
        repeated = len(self.prompts) - len(set(self.prompts))
        # legitimate in COCO (identical captions of different images), so not an error; by design in digits
        if repeated and self.name not in ("digits", "scenes"):
            log.warning("prompt set '%s' repeats %d prompt texts (ids differ, so do seeds)", self.name, repeated)

    @staticmethod
    def hash(ids, prompts) -> str:
        return hashlib.sha256(json.dumps([list(ids), list(prompts)]).encode()).hexdigest()[:12]

    def digest(self) -> str:
        """Content hash (ids and texts) of these prompts: a changed prompt set never reuses another's results."""
        return self.hash(self.ids, self.prompts)

    def source_digest(self) -> str:
        """Content hash of the set these prompts were cut from (themselves when not cut)."""
        return self.source or self.digest()

    def reference_digest(self) -> str:
        """Hash of the reference image list (paths and sizes): the key of cached real statistics."""
        files = [(p, Path(p).stat().st_size) for p in self.image_paths or ()]
        return hashlib.sha256(json.dumps(files).encode()).hexdigest()[:12]

    def __len__(self) -> int:
        return len(self.prompts)


def load_prompts(kind: str = "builtin", path: str | None = None, limit: int | None = None,
                 texts: list[str] | None = None) -> PromptSet:
    """Load a prompt set: `builtin`, `csv` (columns `prompt` and optional `id`, e.g. coco5k.csv), `list`
    (`texts`, a user's own prompts), `digits` (the miniature: "a handwritten digit <d>", d = i mod 10,
    1,000 prompts; its FID reference is all 1,797 real digits whatever the limit) or `scenes` (the second
    miniature: the captions of 2,000 evaluation scenes; reference image i is scene i drawn at 64x64)."""
    paired = True  # image_paths[i] belongs to prompt i (COCO), so `limit` cuts both
    if kind == "digits":
        from crdiff.miniature import digits
        from crdiff.models import cache_dir

        prompts = [digits.prompt(i % 10) for i in range(DIGIT_PROMPTS)]
        ids = [f"digits_{i}" for i in range(len(prompts))]
        images, name, paired = digits.reference_files(cache_dir() / "reference" / "digits"), "digits", False
    elif kind == "scenes":
        from crdiff.miniature import scenes
        from crdiff.models import cache_dir

        prompts = scenes.prompts(SCENE_PROMPTS)
        ids = [f"scenes_{i}" for i in range(SCENE_PROMPTS)]
        # reference images are drawn only for the prompts kept (`limit` cuts both, they pair one to one)
        count = SCENE_PROMPTS if limit is None else max(0, min(limit, SCENE_PROMPTS))  # a bad limit: error below
        images, name = scenes.reference_files(cache_dir() / "reference" / "scenes", count), "scenes"
    elif kind == "list":
        prompts, ids, images, name = list(texts or []), [f"user_{i}" for i in range(len(texts or []))], None, "user"
    elif kind == "builtin":
        prompts = BUILTIN
        ids = [f"builtin_{i}" for i in range(len(prompts))]
        images, name = None, "builtin"
    elif kind == "csv":
        if not path:
            raise ValueError("prompts.kind=csv needs prompts.path=<file.csv>")
        file = Path(path)
        if not file.is_file():
            raise ValueError(f"prompt file {str(file)!r} does not exist")
        with file.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "prompt" not in (reader.fieldnames or []):
                raise ValueError(f"prompt file {str(file)!r} has columns {reader.fieldnames}; it needs a 'prompt' column"
                                 " (and optionally 'id')")
            rows = list(reader)
        prompts = [r["prompt"] for r in rows]
        ids = [r.get("id") or f"row_{i}" for i, r in enumerate(rows)]
        images = [r["image_path"] for r in rows] if "image_path" in (reader.fieldnames or []) else None
        name = file.stem if file.stem != "prompts" else file.parent.name
    else:
        raise ValueError(f"unknown prompt kind {kind!r}; valid choices: ['builtin', 'csv', 'list', 'digits', 'scenes']")
    source = PromptSet.hash(ids, prompts)
    if limit is not None:
        if limit < 1:
            raise ValueError(f"prompts.limit is {limit}; it must be a positive integer or null")
        prompts, ids, images = prompts[:limit], ids[:limit], images[:limit] if images and paired else images
    return PromptSet(name, tuple(prompts), tuple(ids), tuple(images) if images else None, source)


def write_prompt_csv(path: str | Path, ids: list[str], prompts: list[str], extra: dict[str, list] | None = None) -> None:
    """Write a prompt CSV readable by `load_prompts('csv', path)`."""
    extra = extra or {}
    with Path(path).open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "prompt", *extra])
        for i, (pid, prompt) in enumerate(zip(ids, prompts)):
            writer.writerow([pid, prompt, *(values[i] for values in extra.values())])
