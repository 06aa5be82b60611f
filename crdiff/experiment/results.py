"""Result rows (one JSON file per run key, see crdiff.experiment.keys), provenance and the results table."""

from __future__ import annotations

import json
import platform
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from crdiff import atomic


def cpu_name() -> str:
    """The CPU's model and the vector instructions torch's kernels use here (e.g. 'Intel(R) Xeon(R)
    Processor, AVX512'). Float rounding follows them: the same code and seeds give images a uint8 level
    apart, and trained weights that drift apart, on another CPU (results/miniature_scenes/rebuild.md)."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.backends.cpu.get_cpu_capability()}"


def device_name(device) -> str:
    """The accelerator's name for a CUDA device (e.g. 'NVIDIA H100 80GB HBM3'), else the CPU's (`cpu_name`)."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return cpu_name()


def provenance(device: str = "cpu", machine=None) -> dict[str, Any]:
    """Where and with what a result was made: git SHA, versions, torch's CUDA build, device, the GPUs
    and their driver (`machine`: a `hardware.Probe`, probed if None), host, time."""
    import diffusers
    import torch
    import transformers

    from crdiff.experiment import slurm
    from crdiff.experiment.hardware import probe

    machine = probe() if machine is None else machine

    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        sha = None
    name = device_name(device)
    return {
        "git_sha": sha, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "transformers": transformers.__version__, "device": str(device), "device_name": name,
        "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "driver": machine.driver, "driver_cuda": machine.driver_cuda, "gpus": list(machine.names),
        "host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slurm": slurm.job(),  # job id and restart count (requeues at a time limit, preemption), None outside SLURM
    }


def write_row(results_dir: Path, key: str, row: dict[str, Any]) -> Path:
    """Store one result row atomically as `<results_dir>/<key>.json`."""
    path = Path(results_dir) / f"{key}.json"
    atomic.write_json(path, {"key": key, **row})
    return path


def load_table(output_dir: str | Path):
    """All result rows under `output_dir/results` as one pandas DataFrame (one row per key): each metric
    a column, its 95% interval `<metric>_lo` / `<metric>_hi`, `output_dir` beside (for the per-image
    files the rows name, relative to it), `experiments` a tuple (rows older than it: their `experiment`)."""
    import pandas as pd

    rows = []
    for file in sorted(Path(output_dir, "results").glob("*.json")):
        row = json.loads(file.read_text())
        flat = {k: v for k, v in row.items() if not isinstance(v, dict)}
        flat.update(row.get("metrics", {}))
        for name, bounds in (row.get("ci95") or {}).items():
            flat[f"{name}_lo"], flat[f"{name}_hi"] = bounds if bounds else (None, None)
        flat["experiments"] = tuple(row.get("experiments") or ([row["experiment"]] if "experiment" in row else []))
        flat["scores"], flat["intervals"], flat["output_dir"] = (row.get("scores") or {}, row.get("intervals") or {},
                                                                 str(output_dir))
        rows.append(flat)
    return pd.DataFrame(rows)
