"""An offline hub cache laid out as huggingface_hub writes it, for tests of the real lookup paths:
`<cache>/models--<org>--<name>/{blobs/<sha256>, snapshots/<rev>/<file> -> blob, refs/main}`."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def add_repo(cache: Path, repo: str, files: Path | dict[str, bytes], revision: str = "0" * 40,
             main: bool = True) -> Path:
    """Put `files` (a folder saved with save_pretrained, or {relative path: bytes}) into `cache` as
    snapshot `revision` of `repo`; `main=True` points refs/main at it. Returns the snapshot folder."""
    root = Path(cache) / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / revision
    items = ({str(p.relative_to(files)): p.read_bytes() for p in Path(files).rglob("*") if p.is_file()}
             if isinstance(files, Path) else files)
    for name, data in items.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    if main:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text(revision)
    return snapshot


def remove(snapshot: Path, name: str) -> None:
    """Drop one file or folder from a snapshot (an interrupted download)."""
    path = snapshot / name
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def use(monkeypatch, cache: Path, torch_home: Path | None = None) -> Path:
    """Point this process (huggingface_hub resolved its cache folder at import: patch its constant too)
    and its subprocesses (the environment) at `cache`, and torch's hub at `torch_home`."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    if torch_home is not None:
        monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return Path(cache)
