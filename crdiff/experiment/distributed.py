"""Ranks under torchrun, SLURM (srun / submitit) or one plain process; one gloo group for all coordination.

Every collective crdiff issues (counts, barriers, metric states) is on CPU tensors through a gloo
group. The images never travel between ranks (they are files), so nothing needs NCCL: the same group
works on a CPU-only CI machine, on GPU nodes, and for two ranks sharing one GPU (NCCL refuses that).
`init` is the only place a process group is made, for tests and production alike.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist

from crdiff.experiment import hardware

T = TypeVar("T")
# How long ranks wait for each other at rendezvous and at a barrier (metrics wait for the slowest rank).
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list[T]) -> list[T]:
        """This rank's share: every `world`-th item, so each item is done exactly once."""
        return items[self.rank :: self.world]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def all_sum(self, values: list[int]) -> list[int]:
        """Element-wise sum over ranks (a CPU tensor through the gloo group)."""
        if self.world == 1:
            return list(values)
        total = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(total)
        return total.tolist()

    def all_sum_float(self, values: list[float]) -> list[float]:
        """Element-wise float64 sum over ranks: a value only one rank holds (the others 0.0) arrives exact."""
        if self.world == 1:
            return list(values)
        total = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(total)
        return total.tolist()


def hostnames(nodelist: str) -> list[str]:
    """Expand SLURM's compressed node list: `gpu[01-03,7],cpu5` -> gpu01 gpu02 gpu03 gpu7 cpu5."""
    hosts = []
    for prefix, ranges, plain in re.findall(r"([^,\[]+)\[([^\]]+)\]|([^,\[\]]+)", nodelist):
        if plain:
            hosts.append(plain)
            continue
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            hosts += [f"{prefix}{i:0{len(low)}d}" for i in range(int(low), int(high or low) + 1)]
    if not hosts:
        raise ValueError(f"SLURM_JOB_NODELIST {nodelist!r} names no host")
    return hosts


def launch_env(environ: Mapping[str, str]) -> dict[str, str]:
    """torch's env:// variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) of this process.

    torchrun / accelerate set them and win. A task started by SLURM (srun, or submitit's jobs) has
    only SLURM_*: rank SLURM_PROCID of SLURM_NTASKS, master = the first host of the job's node list,
    port drawn from the job id exactly as submitit's TorchDistributedEnvironment does (so mixing
    the two agrees). Otherwise: one process.
    """
    if "RANK" in environ and "WORLD_SIZE" in environ:
        return {k: environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
                if k in environ}
    if "SLURM_PROCID" in environ and int(environ.get("SLURM_NTASKS", "1")) > 1:
        missing = [k for k in ("SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_JOB_ID")
                   if k not in environ]
        if missing:
            raise ValueError(f"a SLURM task without {missing}: launch it with srun (or set RANK / WORLD_SIZE)")
        job_id = environ["SLURM_JOB_ID"]
        if environ.get("SLURM_ARRAY_JOB_ID"):  # submitit's job id of an array task
            job_id = f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
        return {"RANK": environ["SLURM_PROCID"], "WORLD_SIZE": environ["SLURM_NTASKS"],
                "LOCAL_RANK": environ["SLURM_LOCALID"],
                "MASTER_ADDR": environ.get("MASTER_ADDR") or hostnames(environ["SLURM_JOB_NODELIST"])[0],
                "MASTER_PORT": environ.get("MASTER_PORT") or str(random.Random(job_id).randint(20000, 60000))}
    return {}


def init(device: str = "auto", environ: Mapping[str, str] | None = None) -> tuple[Ranks, str]:
    """Join the gloo group when there are several ranks; return the ranks and this rank's device."""
    env = launch_env(os.environ if environ is None else environ)
    world = int(env.get("WORLD_SIZE", "1"))
    ranks = Ranks(int(env.get("RANK", "0")), world, int(env.get("LOCAL_RANK", "0")))
    device = hardware.pick(device, ranks.local_rank)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if world > 1:
        if dist.is_initialized():
            if "gloo" not in dist.get_backend():
                raise ValueError(f"a process group with backend {dist.get_backend()!r} exists; crdiff coordinates "
                                 "through gloo (CPU tensors): let crdiff create the group")
        else:
            os.environ.update(env)  # env:// reads them; under torchrun they are already there
            dist.init_process_group("gloo", timeout=TIMEOUT)
    return ranks, device


class NotShared(ValueError):
    """Ranks of one launch see different output_dirs."""


def check_shared(folder: Path, ranks: Ranks) -> None:
    """Every rank must see one output_dir: claims and finished images are how ranks split the work, so
    with a node-local folder every node would make every image. Rank 0 writes a file, every rank
    looks for it, and all stop at once (the same error on each) if some rank cannot see it."""
    if ranks.world == 1:
        return
    token = ranks.all_sum([random.SystemRandom().getrandbits(62) if ranks.is_main else 0])[0]
    probe = Path(folder) / f".launch-{token}"
    if ranks.is_main:
        Path(folder).mkdir(parents=True, exist_ok=True)
        probe.touch()
    ranks.barrier()
    blind = ranks.all_sum([int(r == ranks.rank and not probe.exists()) for r in range(ranks.world)])
    ranks.barrier()
    if ranks.is_main:
        probe.unlink(missing_ok=True)
    if any(blind):
        ranks_ = [r for r, b in enumerate(blind) if b]
        raise NotShared(f"output_dir={folder} is not one folder for all ranks: rank(s) {ranks_} of {ranks.world} do "
                        "not see the file rank 0 wrote there (a node-local disk?); give every rank a folder on a "
                        "shared filesystem")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
