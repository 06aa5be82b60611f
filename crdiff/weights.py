"""What a model or a metric needs on disk, declared once: the run's preflight check, `task=plan` and
`scripts/prefetch_weights.py` all read the same `Requirement`s.

Each requirement answers three questions: `missing()` (None when it is on this machine, else why not;
a real lookup in the hub cache, never a download), `fetch()` (download it, return the bytes that
arrived) and `fix` (the one command that puts it in place). Cache folders come from the libraries
themselves (huggingface_hub's constants, torch.hub.get_dir()), the one source of truth the loaders
also read: XDG_CACHE_HOME, HF_HOME, HF_HUB_CACHE and TORCH_HOME all count as they count there.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

# Pipeline components that hold weights; tokenizers, schedulers and processors hold none.
_NO_WEIGHTS = ("tokenizer", "scheduler", "feature_extractor", "image_processor", "processor")


def hub_cache() -> Path:
    """The Hugging Face hub cache exactly as huggingface_hub resolved it for this process (`HF_HUB_CACHE`,
    else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`, else ~/.cache/huggingface/hub, with `~`
    and `$VARS` expanded): the folder every loader that calls the hub without a cache_dir (transformers,
    open_clip, the metrics) reads, so preflight, prefetch and plan look where the run will."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def torch_hub() -> Path:
    """torch.hub's folder (`$TORCH_HOME/hub`, else `$XDG_CACHE_HOME/torch/hub`, else ~/.cache/torch/hub):
    torch-fidelity's Inception and the aesthetic head are kept under its `checkpoints/`."""
    import torch

    return Path(torch.hub.get_dir())


def url_override(url: str) -> str:
    """`url` from a mirror when `CRDIFF_WEIGHTS_URL` is set (`<mirror>/<file name>`): weights that do not come
    from the hub (Inception, the aesthetic head) then download from a local file server, as in the tests."""
    mirror = os.environ.get("CRDIFF_WEIGHTS_URL", "").rstrip("/")
    return f"{mirror}/{url.rsplit('/', 1)[-1]}" if mirror else url


# Repositories the hub serves only to an account that accepted the licence on the model's page, and only
# with that account's token: say so before a download fails with a bare 401/403.
GATED = {
    "black-forest-labs/FLUX.1-dev": "the FLUX.1 [dev] Non-Commercial License",
    "stabilityai/stable-diffusion-3-medium-diffusers": "the Stability AI Community License",
}


def gated(repo: str) -> str | None:
    """What a gated `repo` needs before it downloads (None if it is not gated)."""
    if repo not in GATED:
        return None
    return (f"{repo} is gated: accept {GATED[repo]} at https://huggingface.co/{repo} with your account, then "
            "download with its token (HF_TOKEN=<token> or `hf auth login`)")


def has_token() -> bool:
    from huggingface_hub import get_token

    return get_token() is not None


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def _repo_bytes(repo: str) -> int:
    """Bytes of the blobs the hub cache holds for `repo` (each file once, whatever its snapshots)."""
    blobs = hub_cache() / f"models--{repo.replace('/', '--')}" / "blobs"
    return sum(f.stat().st_size for f in blobs.iterdir() if f.is_file()) if blobs.is_dir() else 0


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`, following the hub cache's symlinks to their blobs."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


class Requirement:
    what: str  # e.g. "model sdxl", "metric clip"

    def missing(self) -> str | None:
        raise NotImplementedError

    def fetch(self) -> int:
        raise NotImplementedError

    @property
    def fix(self) -> str:
        raise NotImplementedError

    @property
    def where(self) -> str:
        """Short name of what is fetched (repo id, file), for prefetch's report."""
        raise NotImplementedError

    @property
    def gate(self) -> str | None:
        """What a gated repository needs before it downloads (licence, token); None for the others."""
        return None


@dataclass(frozen=True)
class HubFiles(Requirement):
    """Files of a hub repo; each entry lists alternatives (the first one cached or fetchable counts),
    e.g. `("model.safetensors", "pytorch_model.bin")`."""

    what: str
    repo: str
    files: tuple[tuple[str, ...], ...]
    revision: str | None = None

    def missing(self) -> str | None:
        from huggingface_hub import try_to_load_from_cache

        absent = [" | ".join(alts) for alts in self.files
                  if not any(isinstance(try_to_load_from_cache(self.repo, f, cache_dir=hub_cache(),
                                                               revision=self.revision), str) for f in alts)]
        return f"{self.repo}: {', '.join(absent)} not in the hub cache {hub_cache()}" if absent else None

    def fetch(self) -> int:
        from huggingface_hub import hf_hub_download

        before = _repo_bytes(self.repo)
        for alternatives in self.files:
            errors = []
            for name in alternatives:
                try:
                    hf_hub_download(self.repo, name, revision=self.revision, cache_dir=hub_cache())
                    break
                except Exception as err:  # noqa: BLE001 - the next alternative may exist
                    errors.append(f"{name}: {err.__class__.__name__}")
            else:
                raise OSError(f"{self.what}: none of {list(alternatives)} could be fetched from {self.repo} ({errors})")
        return _repo_bytes(self.repo) - before

    @property
    def fix(self) -> str:
        rev = f" --revision {self.revision}" if self.revision else ""
        return f"hf download {self.repo} {' '.join(alts[0] for alts in self.files)}{rev}"

    @property
    def where(self) -> str:
        return self.repo

    @property
    def gate(self) -> str | None:
        return gated(self.repo)


@dataclass(frozen=True)
class UrlFile(Requirement):
    """A file downloaded from a URL into a cache folder (torch hub checkpoints, open_clip's cache)."""

    what: str
    url: str
    path: Path

    def missing(self) -> str | None:
        return None if self.path.is_file() else f"{self.path} does not exist"

    def fetch(self) -> int:
        import torch

        if self.path.is_file():
            return 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url_override(self.url), str(self.path), progress=False)
        return self.path.stat().st_size

    @property
    def fix(self) -> str:
        return f"curl -L --create-dirs -o {self.path} {self.url}"

    @property
    def where(self) -> str:
        return self.url


@dataclass(frozen=True)
class LocalFiles(Requirement):
    """Files crdiff ships or builds itself (the digits model and classifier); nothing to download."""

    what: str
    paths: tuple[Path, ...]
    how: str  # the command that rebuilds them

    def missing(self) -> str | None:
        absent = [str(p) for p in self.paths if not p.exists()]
        return f"{', '.join(absent)} missing" if absent else None

    def fetch(self) -> int:
        problem = self.missing()
        if problem:
            raise OSError(f"{self.what}: {problem}; nothing to download, rebuild it: {self.how}")
        return 0

    @property
    def fix(self) -> str:
        return self.how

    @property
    def where(self) -> str:
        return ", ".join(p.name for p in self.paths)


def is_variant_file(name: str, variant: str) -> bool:
    """`model.fp16.safetensors`, a shard `model.fp16-00001-of-00002.safetensors`, or its index."""
    return re.fullmatch(rf"[\w-]+\.{re.escape(variant)}(-[\w-]+)?\.(safetensors|bin)|[\w-]+\.(safetensors|bin)\.index\."
                        rf"{re.escape(variant)}\.json", name) is not None


def is_plain_file(name: str) -> bool:
    """A weight file without a variant infix (what diffusers loads when no variant is asked for)."""
    return re.fullmatch(r"[\w-]+\.(safetensors|bin)(\.index\.json)?", name) is not None


def pipeline_gaps(folder: Path, variant: str | None) -> list[str]:
    """What a saved diffusers pipeline folder lacks for `from_pretrained(folder, variant=...)`: its
    model_index.json, a component folder, or a weight file of a component that holds weights."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return ["model_index.json"]
    gaps = []
    for name, entry in json.loads(index.read_text()).items():
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        sub = Path(folder) / name
        if not sub.is_dir() or not any(sub.iterdir()):
            gaps.append(f"{name}/")
        elif not any(part in name for part in _NO_WEIGHTS):
            # diffusers falls back to the plain files of a component that has no `variant` copy, but
            # without a variant it never reads variant files
            names = [f.name for f in sub.iterdir()]
            if not any(is_plain_file(n) or (variant and is_variant_file(n, variant)) for n in names):
                held = sorted({v for v in ("fp16", "bf16") for n in names if is_variant_file(n, v)})
                gaps.append(f"{name}/ weights" + (f" ({variant} or plain)" if variant else " (plain files)")
                            + (f"; it holds {'/'.join(held)} files: run with model.dtype={held[0]}" if held else ""))
    return gaps


@dataclass(frozen=True)
class PipelineWeights(Requirement):
    """A diffusers pipeline from the hub (at `revision`, files of `variant`) or a local folder."""

    what: str
    source: str
    revision: str | None = None
    variant: str | None = None

    @property
    def is_folder(self) -> bool:
        return Path(self.source).is_dir() or self.source.startswith(("/", "./", "../", "~"))

    def missing(self) -> str | None:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        if self.is_folder:
            folder = Path(self.source).expanduser()
            if not folder.is_dir():
                return f"folder {self.source} does not exist"
        else:
            try:
                folder = Path(snapshot_download(self.source, revision=self.revision, cache_dir=hub_cache(),
                                                local_files_only=True))
            except (LocalEntryNotFoundError, OSError, ValueError):
                return f"{self.where} is not in the hub cache {hub_cache()}" + (f"; {self.gate}" if self.gate else "")
        gaps = pipeline_gaps(folder, self.variant)
        return f"{self.where} lacks {', '.join(gaps)} (in {folder})" if gaps else None

    def fetch(self) -> int:
        if self.is_folder:
            problem = self.missing()
            if problem:
                raise OSError(f"{self.what}: {problem}; a local folder cannot be downloaded")
            return 0
        from diffusers import DiffusionPipeline

        before = _repo_bytes(self.source)
        # the same file selection from_pretrained makes for this revision and variant
        DiffusionPipeline.download(self.source, revision=self.revision, variant=self.variant, cache_dir=hub_cache())
        return _repo_bytes(self.source) - before

    @property
    def fix(self) -> str:
        if self.is_folder:
            return f"pipe.save_pretrained('{self.source}')"
        rev = f" --revision {self.revision}" if self.revision else ""
        weights = f"'*/*.{self.variant}.safetensors'" if self.variant else "'*/*.safetensors'"
        return f"hf download {self.source}{rev} --include '*.json' --include '*.txt' --include {weights}"

    @property
    def gate(self) -> str | None:
        return None if self.is_folder else gated(self.source)

    @property
    def where(self) -> str:
        return self.source + (f"@{self.revision}" if self.revision else "") + (f" ({self.variant})" if self.variant else "")
