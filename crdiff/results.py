"""Run keys, atomic files, provenance and the results table.

A result is keyed by a hash of the config that changes it. Keys that do NOT enter it, because they
change where or how fast a run goes but not its images (up to float rounding): `device`,
`sampler.batch_size`, `amplify.batched`, `wandb.*`, `hydra.*` (launcher, sweep), `output_dir`,
rank count.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def run_key(semantic: dict[str, Any], length: int = 10) -> str:
    """Stable short hash of a JSON-serialisable dict (key order does not matter)."""
    return hashlib.sha256(json.dumps(semantic, sort_keys=True, default=str).encode()).hexdigest()[:length]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a reader (or a killed writer) never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n").encode())


def provenance(device: str = "cpu") -> dict[str, Any]:
    """Where and with what a result was made: git SHA, versions, device, host, time."""
    import diffusers
    import torch
    import transformers

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    name = torch.cuda.get_device_name() if str(device).startswith("cuda") and torch.cuda.is_available() else platform.processor() or platform.machine()
    return {
        "git_sha": sha, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "device": str(device), "device_name": name,
        "host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def write_row(results_dir: Path, key: str, row: dict[str, Any]) -> Path:
    """Store one result row atomically as `<results_dir>/<key>.json`."""
    path = Path(results_dir) / f"{key}.json"
    atomic_write_json(path, {"key": key, **row})
    return path


def load_table(output_dir: str | Path):
    """All result rows under `output_dir/results` as one pandas DataFrame (one row per key)."""
    import pandas as pd

    rows = []
    for file in sorted(Path(output_dir, "results").glob("*.json")):
        row = json.loads(file.read_text())
        flat = {k: v for k, v in row.items() if not isinstance(v, dict)}
        for section in ("metrics",):
            flat.update(row.get(section, {}))
        rows.append(flat)
    return pd.DataFrame(rows)
