"""Atomic writes: a reader (or a killed writer) never sees a partial file or folder.

Every file crdiff writes that another process may read (images, result rows, search state, presets,
saved pipelines, trained weights) goes through here: write to a temporary sibling, then rename.
`mkstemp` / `mkdtemp` create owner-only (0600 / 0700) temporaries; each is given the mode an ordinary
`open` / `mkdir` would have under the process umask before it is renamed, so a collaborator's account
(umask 002, a shared CRDIFF_CACHE) reads and resumes what this one wrote.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set straight back
    os.umask(mask)
    return mask


def _as_created(path: Path, folder: bool = False) -> None:
    """Give `path` the mode `open` (0666) or `mkdir` (0777) would under the umask."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    write_with(path, lambda tmp: tmp.write_bytes(data))


def write_json(path: Path, obj: Any) -> None:
    """`obj` as indented, key-sorted JSON, atomically."""
    write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def write_with(path: Path, save: Callable[[Path], Any]) -> None:
    """Let `save(tmp_path)` write a file (e.g. safetensors' `save_file`), then rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save(Path(tmp))
        _as_created(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_folder(save: Callable[[Path], Any], folder: Path, replace: bool = False) -> Path:
    """Let `save(tmp_dir)` fill a temporary sibling folder (e.g. `pipe.save_pretrained`), then rename it.

    `replace=False` keeps a folder another process finished first; `True` replaces an existing one.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        save(tmp)
        _as_created(tmp, folder=True)
        if replace and folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError:
        if not (folder.is_dir() and any(folder.iterdir())):  # not a race another process won: a real error
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder
