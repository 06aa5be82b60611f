"""Ranks under torchrun / accelerate launch (env:// rendezvous); one process otherwise."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


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


def init(device: str = "auto") -> tuple[Ranks, str]:
    """Join the process group if launched with WORLD_SIZE > 1; return the ranks and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ranks = Ranks(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    if device == "auto":
        device = f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    return ranks, device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
