"""Processes and devices of a training run: ``torchrun`` process groups, device and precision choice."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import Tensor


__all__ = ["Dist", "setup_distributed", "resolve_precision", "autocast"]


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def mean(self, x: Tensor) -> Tensor:
        """Average a scalar tensor over the processes (identity in a single process)."""
        if self.active:
            x = x.clone()
            torch.distributed.all_reduce(x)
            x /= self.world_size
        return x

    def sum(self, x: Tensor) -> Tensor:
        if self.active:
            x = x.clone()
            torch.distributed.all_reduce(x)
        return x


def setup_distributed(device: torch.device) -> Dist:
    """Join the process group when launched by ``torchrun`` (RANK / WORLD_SIZE in the environment)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group(backend=backend)
        owns = True
    return Dist(rank=rank, world_size=world, local_rank=local, owns_group=owns)


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether to use a gradient scaler)."""
    if precision == "auto":
        if device.type != "cuda":
            return None, False
        return (torch.bfloat16, False) if torch.cuda.is_bf16_supported() else (torch.float16, True)
    return {"fp32": (None, False), "bf16": (torch.bfloat16, False), "fp16": (torch.float16, True)}[precision]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
