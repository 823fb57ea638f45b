"""Device and dtype names as every command and the Python API accept them.

``--device``: ``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; an
unavailable device is a named error, never a traceback from deep inside torch.

``--dtype``: ``auto``, ``fp32``, ``bf16``, ``fp16``. ``auto`` is fp32 on the CPU (the reference
numerics; bf16 halves the weights' memory and is faster on CPUs with AVX512-BF16, but moves
logits by ~4e-2, as the ``rwkv`` package's own bf16 does; on CPUs without it, bf16 products of
many rows run as float32 products of the bf16 values, :mod:`spikelm.ops.linear`) and bf16 on a CUDA GPU that supports it (fp16 otherwise): there the
memory and speed matter more, and the WKV recurrences and the spike scales stay fp32 whatever the
model dtype.

TF32 (:func:`tf32`): on Ampere and newer GPUs fp32 matrix products can run on the tensor cores with
a 10-bit mantissa (TF32), several times faster. It matters only where the compute is fp32: a
training run with ``precision: fp32`` on CUDA (its ``tf32`` setting, on by default) turns it on;
under bf16/fp16 autocast it stays off, so the recurrences that are kept in fp32 on purpose (the WKV
forms, the spike scales) keep full fp32 products. The CPU has no TF32 and nothing is changed there.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from .config import ConfigError

__all__ = ["DEVICE_CHOICES", "DTYPE_CHOICES", "DTYPES", "resolve_device", "resolve_dtype", "tf32_wanted", "tf32"]

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """The torch device a ``--device`` value names; under ``torchrun`` plain ``cuda`` (or ``auto``)
    takes the GPU of the process's local rank."""
    if isinstance(name, torch.device):
        return name
    name = str(name).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not m:
        raise ConfigError(f"--device {name!r}: unknown device; choose {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu (or auto)")
    index = local_rank if m.group(1) is None else int(m.group(1))
    if index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str = "cpu") -> torch.dtype:
    """The model dtype a ``--dtype`` value names on ``device`` (see the module docstring)."""
    if isinstance(name, torch.dtype):
        return name
    key = "auto" if name is None else str(name).strip().lower()
    if key == "auto":
        if torch.device(device).type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if key not in DTYPES:
        raise ConfigError(f"--dtype {name!r}: unknown dtype; choose one of {', '.join(DTYPE_CHOICES)}")
    return DTYPES[key]


def tf32_wanted(device: torch.device | str, compute_dtype: torch.dtype | None, enabled: bool = True) -> bool:
    """Whether fp32 matmuls should use TF32: ``enabled``, on CUDA, and the compute is fp32
    (``compute_dtype`` None or float32, i.e. no bf16/fp16 autocast)."""
    return bool(enabled) and torch.device(device).type == "cuda" and compute_dtype in (None, torch.float32)


@contextlib.contextmanager
def tf32(device: torch.device | str, compute_dtype: torch.dtype | None, enabled: bool = True) -> Iterator[bool]:
    """Within the block, TF32 matmuls and convolutions as :func:`tf32_wanted` says (CUDA only: on
    the CPU the process's settings are not touched); the previous settings come back after it.
    Yields whether TF32 is on."""
    on = tf32_wanted(device, compute_dtype, enabled)
    if torch.device(device).type != "cuda":
        yield False
        return
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield on
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
