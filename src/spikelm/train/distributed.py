"""Processes and devices of a training run: ``torchrun`` process groups, device and precision
choice, FSDP2 sharding, and the memory a process used."""

from __future__ import annotations

import contextlib
import copy
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as tdist
from torch import Tensor, nn

from ..config import ConfigError
from ..devices import resolve_device

__all__ = ["Dist", "setup_distributed", "resolve_precision", "autocast", "train_device", "shard_model", "is_sharded",
           "average_grads", "clip_sharded_grads", "meta_copy", "local_bytes", "MemoryWatch"]

PARAM_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

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


# ---------------------------------------------------------------------------- FSDP2
def shard_model(model: nn.Module, device: torch.device, world_size: int, param_dtype: str = "fp32") -> list[nn.Parameter]:
    """Shard ``model`` in place with FSDP2 (``fully_shard``) over all the processes: one group per
    block of its ``blocks`` list (gathered just before the block runs, freed after it), then the
    root (embedding, head, final norm). Parameters, gradients and the optimizer state built on
    them afterwards are then 1/world_size per process.

    Mixed-precision policy: parameters gathered and used in ``param_dtype`` (``fp32`` keeps them as
    they are and leaves the casts to autocast, the arithmetic of DDP), gradients reduced in fp32.
    A block's inputs are never cast (its recurrent state stays fp32).

    FSDP cannot shard a 0-dimensional parameter (a converted model's per-tensor spike scale, which
    fine-tuning learns): such parameters stay whole on every process, left out of FSDP; they are
    returned, and their gradients must be averaged over the processes by the caller
    (:func:`average_grads`), as DDP would.
    """
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch < 2.6
        raise ConfigError(f"distributed: fsdp needs torch >= 2.6 (FSDP2's fully_shard); this is torch {torch.__version__}; "
                          "use distributed: ddp") from None
    for p in model.parameters():  # FSDP shards contiguous storage only (an init may leave a transposed weight)
        if not p.is_contiguous():
            p.data = p.data.contiguous()
    mesh = init_device_mesh(device.type, (world_size,))
    policy = MixedPrecisionPolicy(param_dtype=PARAM_DTYPES[param_dtype], reduce_dtype=torch.float32,
                                  cast_forward_inputs=False)
    whole = [p for p in model.parameters() if p.dim() == 0]
    ignored = {"ignored_params": set(whole)} if whole else {}
    blocks = getattr(model, "blocks", None)
    for block in blocks if isinstance(blocks, nn.ModuleList) else ():
        fully_shard(block, mesh=mesh, mp_policy=policy, **ignored)
    fully_shard(model, mesh=mesh, mp_policy=policy, **ignored)
    return whole


def average_grads(params: list[nn.Parameter], world_size: int) -> None:
    """Average the gradients of parameters every process holds whole over the processes."""
    for p in params:
        if p.grad is not None:
            tdist.all_reduce(p.grad)
            p.grad /= world_size


def clip_sharded_grads(params: list[nn.Parameter], max_norm: float) -> Tensor:
    """``clip_grad_norm_`` for a sharded model (DTensor gradients, and whole ones that
    :func:`shard_model` left out): the norm of all the gradients together, each shard's squares
    summed over the processes and each whole gradient's counted once; every gradient scaled by
    ``min(1, max_norm / (norm + 1e-6))`` as torch does. Returns the norm (a plain tensor, the same
    on every process)."""
    grads = [p.grad for p in params if p.grad is not None]
    sharded = [_local(g).float() for g in grads if hasattr(g, "to_local")]
    whole = [g.float() for g in grads if not hasattr(g, "to_local")]
    ref = grads[0] if grads else torch.zeros(())
    sq = torch.zeros((), dtype=torch.float32, device=_local(ref).device)
    for g in sharded:
        sq += g.square().sum()
    if tdist.is_initialized():
        tdist.all_reduce(sq)
    for g in whole:
        sq += g.square().sum()
    norm = sq.sqrt()
    coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
    for g in grads:
        _local(g).mul_(coef.to(_local(g).dtype))
    return norm


def meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are on the meta device (no storage):
    its structure, parametrizations and settings, to be filled later (``to_empty`` then
    ``load_state_dict``) with weights gathered from a sharded copy."""
    memo: dict[int, Any] = {}
    for _, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        if id(t) not in memo:
            meta = torch.empty_like(t, device="meta")
            memo[id(t)] = nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
    for m in model.modules():  # hooks are shared, not copied (a bound method would drag its whole object along)
        for name, hooks in vars(m).items():
            if name.endswith("hooks") and isinstance(hooks, dict):
                memo.update((id(fn), fn) for fn in hooks.values())
    return copy.deepcopy(model, memo)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` was sharded by :func:`shard_model` (its parameters are DTensors)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:
        return False
    return isinstance(model, FSDPModule)


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this process


def local_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes this process holds of the parameters, their gradients and the optimizer state (its
    shards under FSDP, everything under DDP)."""
    params = [p for p in model.parameters()]
    state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, Tensor)]

    def size(ts: list[Tensor]) -> int:
        return sum(_local(t).numel() * _local(t).element_size() for t in ts)

    return {"params": size(params), "grads": size([p.grad for p in params if p.grad is not None]),
            "optimizer": size(state)}


class MemoryWatch:
    """The peak memory of this process from :meth:`start` on: on CUDA the most torch held
    allocated on the device (``max_memory_allocated``); on a CPU the growth of the resident set
    (Linux ``VmHWM``, its high-water mark, reset at the start through ``/proc/self/clear_refs``;
    None where that cannot be read)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0

    @staticmethod
    def _status(field: str) -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            return None
        return None

    def start(self) -> MemoryWatch:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            with contextlib.suppress(OSError):
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # VmHWM := VmRSS
            self.base = self._status("VmRSS") or 0
        return self

    def peak(self) -> int | None:
        """Bytes above the level at :meth:`start` at the highest point since."""
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.base
        hwm = self._status("VmHWM")
        return None if hwm is None else max(0, hwm - self.base)
