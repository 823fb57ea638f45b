"""Processes and devices of a training run: ``torchrun`` process groups, device and precision choice."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor

from ..config import ConfigError
from ..devices import resolve_device

__all__ = ["Dist", "setup_distributed", "resolve_precision", "autocast", "train_device"]

T = TypeVar("T")


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

    def max(self, x: Tensor) -> Tensor:
        if self.active:
            x = x.clone()
            torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.MAX)
        return x

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give every rank its result, or raise its error on every rank.

        A decision about the file system (is out_dir locked? does it hold an earlier run?) is made
        once; were each rank to decide, or only rank 0 to raise, the other ranks would die on a
        reset connection instead of reporting the named error.
        """
        if not self.active:
            return fn()
        payload: list[Any] = [None]
        if self.is_main:
            try:
                payload[0] = ("ok", fn())
            except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
                payload[0] = ("error", e)
        tdist.broadcast_object_list(payload, src=0)
        kind, value = payload[0]
        if kind == "error":
            raise value
        return value

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, rank by rank (on every rank)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out


def train_device(name: str, local_rank: int, world_size: int) -> torch.device:
    """The device of this training process. Under ``torchrun`` (``WORLD_SIZE > 1``) ``cuda`` and
    ``auto`` take the GPU of the process's ``LOCAL_RANK``; ``cuda:N`` names one GPU for all the
    processes, which NCCL rejects, so it is an error there."""
    if world_size > 1 and re.fullmatch(r"\s*cuda:\d+\s*", str(name)):
        raise ConfigError(f"device: {name} puts all {world_size} torchrun processes on one GPU; use device: cuda "
                          "(each process takes the GPU of its LOCAL_RANK; choose GPUs with CUDA_VISIBLE_DEVICES)")
    return resolve_device(name, local_rank)


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
