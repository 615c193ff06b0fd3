"""Devices, torchrun jobs and seeding: which device a process uses, its place in a job, barriers, reductions, and
the seed of each epoch of each process."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (torchrun) job; world_size 1 without one."""

    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the torchrun job described by the environment (RANK, WORLD_SIZE, LOCAL_RANK), if any.

    One GPU per process (``cuda:LOCAL_RANK``) with NCCL; gloo on CPU.
    """
    device = resolve_device(device_name)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 and not dist.is_initialized():
        return Distributed(), device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), owns_group=owns), device


def barrier(ctx: Distributed) -> None:
    """Wait for every process of the job (nothing without one)."""
    if ctx.active:
        dist.barrier()


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of everything random in one epoch of one process."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def mean_over_processes(loss_sum: torch.Tensor, batches: int, ctx: Distributed) -> float:
    """The mean of a per-process sum over ``batches`` batches, taken over every process of the job."""
    totals = torch.stack([loss_sum.double(), torch.tensor(float(batches), dtype=torch.float64, device=loss_sum.device)])
    if ctx.active:
        dist.all_reduce(totals)
    return float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")
