"""Matrix products of bf16/fp16 tensors on CPUs that have no native low-precision GEMM.

A bf16 matrix product multiplies bf16 values exactly and accumulates in float32 whatever the
hardware; only the speed depends on it. On a CPU with AVX512-BF16 or AMX, oneDNN runs bf16 GEMMs
several times faster than fp32 ones; on one without (AVX2 only), it emulates them about 10x
*slower* than fp32 (measured 7 against 90 GFLOP/s on a 512 x 512 x 1792 product). There, a product
of more than one row is computed here as the float32 product of the same bf16 values (exact
products, float32 accumulation: the arithmetic of a bf16 GEMM) and rounded back to the input's
dtype. Weights stay stored in their dtype; a float32 copy of one weight lives for one product.
Single rows (decoding) keep the native low-precision path: a matrix-vector product is bound by
memory, where reading half the bytes wins.

Everything else (float32, CUDA, a CPU with native bf16 products) goes straight to torch.
The naive twins are ``F.linear`` / ``torch.matmul`` / ``torch.baddbmm`` themselves (tested).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["linear", "matmul", "baddbmm", "emulated_low_precision"]

_LOW = (torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def _native_cpu(dtype: torch.dtype) -> bool:
    """Does this CPU run ``dtype`` GEMMs natively (oneDNN's own test)?"""
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):  # a torch without these probes: trust torch's own path
        return True


def emulated_low_precision(x: Tensor) -> bool:
    """True where a product of ``x`` (bf16/fp16 on a CPU without native support, more than one
    row) is faster as a float32 product of the same values."""
    return (x.dtype in _LOW and x.device.type == "cpu" and x.numel() > x.shape[-1]
            and not _native_cpu(x.dtype))


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, through float32 where :func:`emulated_low_precision`."""
    if emulated_low_precision(x):
        return F.linear(x.float(), weight.float(), None if bias is None else bias.float()).to(x.dtype)
    return F.linear(x, weight, bias)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b``, through float32 where :func:`emulated_low_precision`."""
    if emulated_low_precision(a):
        return (a.float() @ b.float()).to(a.dtype)
    return a @ b


def baddbmm(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``torch.baddbmm(c, a, b)`` (c + a @ b, batched), through float32 where
    :func:`emulated_low_precision` (then the sum is rounded once, not the product first)."""
    if emulated_low_precision(a):
        return torch.baddbmm(c.float(), a.float(), b.float()).to(a.dtype)
    return torch.baddbmm(c, a, b)
