"""Which device a run gets: never the CPU by accident on a GPU node, never a full-size model on the CPU unasked.

torch from the package index is built for CUDA 13.0 and needs an R580+ driver; on an older driver
`torch.cuda.is_available()` is just False. So the machine is probed without torch (NVIDIA device files,
`nvidia-smi -q`): GPUs that torch cannot use because its CUDA build and the driver disagree stop the
run with the install command that fixes it. GPUs hidden from this process on purpose (an empty
`CUDA_VISIBLE_DEVICES`, a cgroup that denies the device files: a CPU-only step on a GPU node) mean
"no GPU", as on a machine without one.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

INDEX = "https://download.pytorch.org/whl"
# (CUDA build, oldest driver CUDA it runs on, driver series): CUDA 12 builds run on any CUDA 12 driver
# (R525+, minor-version compatibility); cu128 is the first with Blackwell kernels; cu130 needs R580+.
BUILDS = (("cu130", (13, 0), "R580"), ("cu128", (12, 8), "R570"), ("cu126", (12, 0), "R525"))
# A dense sd15 UNet step with CFG at 256x256 on 2 CPU cores, and the POA step relative to it
# (results/bench/core_sd15_256x256_fp32_cpu.md): the floor of a CPU estimate for full-size models.
CPU_S_PER_STEP_256, POA_FACTOR = 4.185, 2.05


@dataclass(frozen=True)
class Probe:
    """The machine's NVIDIA GPUs as seen without torch."""

    device_files: int = 0  # /dev/nvidia0, /dev/nvidia1, ...
    names: tuple[str, ...] = ()
    driver: str | None = None
    driver_cuda: str | None = None  # the newest CUDA the driver runs (nvidia-smi's "CUDA Version")
    hidden: str | None = None  # why this process may not use them, when hidden on purpose

    @property
    def has_gpu(self) -> bool:
        return self.device_files > 0 or bool(self.names)


# Values of CUDA_VISIBLE_DEVICES that select no GPU ("NoDevFiles": what older SLURM sets without a GPU GRES)
NO_DEVICES = ("", "-1", "none", "NoDevFiles")


def _opens(path: Path) -> bool:
    """False when the kernel refuses the device file (a cgroup's device list; the file still shows)."""
    try:
        os.close(os.open(path, os.O_RDONLY))
    except PermissionError:
        return False
    except OSError:  # busy, no driver loaded, ...: not a sign of hiding
        return True
    return True


def probe(dev: Path = Path("/dev"), smi: str = "nvidia-smi", environ: Mapping[str, str] | None = None) -> Probe:
    environ = os.environ if environ is None else environ
    paths = [p for p in dev.glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)]
    files = len(paths)
    hidden = None
    if environ.get("CUDA_VISIBLE_DEVICES", "x").strip() in NO_DEVICES and files:
        hidden = f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']!r}"
    elif paths and not any(_opens(p) for p in paths):
        hidden = f"this process may not open {paths[0]} (a cgroup's device list)"
    try:
        out = subprocess.run([smi, "-q"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):  # no driver tools: the device files still count
        out = ""

    def field_(name: str) -> str | None:
        match = re.search(rf"^\s*{name}\s*:\s*(\S+)", out, re.M)
        return match[1] if match else None

    names = tuple(n.strip() for n in re.findall(r"^\s*Product Name\s*:\s*(.+)$", out, re.M))
    return Probe(files, names, field_("Driver Version"), field_("CUDA Version"), hidden)


def disagree(p: Probe) -> bool:
    """torch's build cannot run on this driver: a CPU-only build, or a CUDA newer than the driver runs."""
    cuda = torch.version.cuda
    if cuda is None:
        return True
    if p.driver_cuda is None:
        return False  # unknown: not a reason to reinstall
    need = next((oldest for _, oldest, _ in BUILDS if tuple(map(int, cuda.split(".")[:2])) >= oldest), (0, 0))
    return tuple(int(x) for x in p.driver_cuda.split(".")[:2]) < need


def fix(driver_cuda: str | None) -> str:
    """The command that installs torch 2.14.1 built for this driver (or what to do instead)."""
    if driver_cuda is None:
        return (f"pip install --force-reinstall torch==2.14.1 torchvision==0.29.1 --index-url {INDEX}/cu126 "
                "(the CUDA 12 build; run nvidia-smi to see the driver's CUDA version)")
    version = tuple(int(x) for x in driver_cuda.split(".")[:2])
    for build, oldest, series in BUILDS:
        if version >= oldest:
            return f"pip install --force-reinstall torch==2.14.1 torchvision==0.29.1 --index-url {INDEX}/{build}"
    return "upgrade the NVIDIA driver to R525 or newer (torch 2.14.1 has no build for CUDA 11)"


def unusable(p: Probe) -> str:
    """One line: the GPUs, the driver's CUDA, torch's CUDA build, and the fix."""
    gpus = f"{len(p.names) or p.device_files} NVIDIA GPU(s)" + (f" ({p.names[0]})" if p.names else "")
    driver = f"driver {p.driver}, CUDA {p.driver_cuda}" if p.driver else "driver version unknown: nvidia-smi failed"
    cuda = torch.version.cuda
    series = next((s for _, oldest, s in BUILDS if cuda and tuple(map(int, cuda.split(".")[:2])) >= oldest), "?")
    build = f"built for CUDA {cuda}, which needs driver {series} or newer" if cuda else "a CPU-only build"
    return (f"this machine has {gpus} [{driver}] but torch {torch.__version__} cannot use them ({build}); "
            f"install the build for this driver: {fix(p.driver_cuda)}; or run on the CPU with device=cpu")


def pick(device: str, local_rank: int = 0, cuda_count: int | None = None, machine: Probe | None = None) -> str:
    """The device of this rank: `auto` (and `cuda`) is its GPU, `cuda:<local_rank mod visible GPUs>`
    (ranks share GPUs when there are more ranks than GPUs; a task shown one GPU uses it), else the
    CPU; GPUs torch cannot use are an error, for `auto` and `cuda` alike, unless hidden on purpose."""
    if cuda_count is None:
        cuda_count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if cuda_count and device in ("auto", "cuda"):
        return f"cuda:{local_rank % cuda_count}"
    if device == "cpu" or (cuda_count and device.startswith("cuda:")):
        return device
    if device == "auto" or device.startswith("cuda"):
        machine = probe() if machine is None else machine
        if machine.has_gpu and machine.hidden is None:
            if disagree(machine):
                raise ValueError(unusable(machine))
            raise ValueError(f"this machine has NVIDIA GPU(s) [driver {machine.driver or 'unknown'}, CUDA "
                             f"{machine.driver_cuda or 'unknown'}] that torch {torch.__version__} (CUDA "
                             f"{torch.version.cuda}) cannot use although its build suits the driver: see nvidia-smi; "
                             "or run on the CPU with device=cpu")
        if device.startswith("cuda"):
            why = f"its GPUs are hidden from this process ({machine.hidden})" if machine.hidden else "this machine has no NVIDIA GPU"
            raise ValueError(f"device={device} but {why}; valid here: auto, cpu")
        return "cpu"
    return device  # mps, xpu, ...: torch names the problem if there is one


def cpu_hours(jobs: list[tuple[int, int, int, bool]]) -> float:
    """A floor on CPU time for (images, steps, pixels, amplified) jobs of a full-size model."""
    return sum(n * steps * CPU_S_PER_STEP_256 * pixels / 256**2 * (POA_FACTOR if amplified else 1)
               for n, steps, pixels, amplified in jobs) / 3600
