"""Matrix products of bf16/fp16 tensors on CPUs that have no native low-precision GEMM.

A bf16 matrix product multiplies bf16 values exactly and accumulates in float32 whatever the
hardware; only the speed depends on it. On a CPU with AVX512-BF16 or AMX, oneDNN runs bf16 GEMMs
several times faster than fp32 ones; on one without (AVX2 only), it emulates them about 10x
*slower* than fp32 (measured 7 against 90 GFLOP/s on a 512 x 512 x 1792 product). There, a product
of more than one row is computed here as the float32 product of the same bf16 values (exact
products, float32 accumulation: the arithmetic of a bf16 GEMM) and rounded back to the input's
dtype. Weights stay stored in their dtype; a float32 copy of one weight lives for one product.
Single rows (decoding) stay in low precision: a matrix-vector product is bound by memory, where
reading half the bytes wins. There, on any CPU, a compiled loop (``gemv`` of :mod:`.cpu_kernels`:
AVX2 widening of the 2-byte weights, float32 sums, one rounding) reads the weights faster than
torch's own path, emulated or native (the 65536 x 512 head on 2 threads: 1.9 against 3.7 ms on an
AVX2 EPYC, where torch emulates bf16; 1.4 against 2.2 ms on a Xeon with AVX512-BF16 and AMX, where
oneDNN's native bf16 kernel serves one row no better); without the compiled kernels, or where a
gradient is needed, torch's own.

Everything else (float32, CUDA, several rows on a CPU with native bf16 products) goes straight to torch.
The naive twins are ``F.linear`` / ``torch.matmul`` / ``torch.baddbmm`` themselves (tested).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cpu_kernels import op as cpu_op

__all__ = ["Linear", "linear", "matmul", "baddbmm", "emulated_low_precision"]

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


_BLOCK_FLOATS = 2**24  # a float32 copy of at most 64 MiB of a weight at a time


def _compiled_gemv(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether a product of ``x`` by the matrix ``weight`` is one row of a bf16/fp16 product on a
    CPU that the compiled ``gemv`` / ``gemv_t`` take (a contiguous matrix of x's dtype, no bias,
    no gradient needed), with or without native low-precision GEMMs (see the module's docstring).
    Cheapest tests first: this runs before every product of a decoding step."""
    return (x.dtype in _LOW and x.numel() == x.shape[-1] and bias is None and weight.dtype == x.dtype
            and x.device.type == "cpu" and weight.dim() == 2 and weight.is_contiguous()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and cpu_op("gemv") is not None)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, through float32 where :func:`emulated_low_precision` or where
    ``weight`` is not in x's low-precision dtype, and through the compiled one-row product where
    :func:`_compiled_gemv`.

    A large weight (a 65536-word head) is taken in blocks of output rows, so the float32 copy
    that exists at any time stays under 64 MiB whatever the layer's size (a whole head of the
    1B6 model in float32 would be 512 MiB, a sixth of its bf16 weights)."""
    if x.dtype == torch.float32:
        return F.linear(x, weight, bias)
    if _compiled_gemv(x, weight, bias):
        return cpu_op("gemv")(x.reshape(-1), weight).view(x.shape[:-1] + weight.shape[:1])
    if not emulated_low_precision(x) and weight.dtype == x.dtype:
        return F.linear(x, weight, bias)
    # emulated, or weights of another dtype than x (a float32 layer given bf16 inputs): the float32
    # product, in x's dtype, on every CPU alike
    xf = x.float()
    rows = max(1, _BLOCK_FLOATS // max(1, weight.shape[1]))
    if weight.shape[0] <= rows:
        return F.linear(xf, weight.float(), None if bias is None else bias.float()).to(x.dtype)
    out = torch.empty(*x.shape[:-1], weight.shape[0], dtype=x.dtype, device=x.device)
    for i in range(0, weight.shape[0], rows):
        b = None if bias is None else bias[i:i + rows].float()
        out[..., i:i + rows] = F.linear(xf, weight[i:i + rows].float(), b)
    return out


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and hooks) whose product is :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)


def matmul(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b``, through float32 where :func:`emulated_low_precision`, and through the compiled
    one-row product (b in its (in, out) order) where :func:`_compiled_gemv`."""
    if emulated_low_precision(a):
        return (a.float() @ b.float()).to(a.dtype)
    if _compiled_gemv(a, b):
        return cpu_op("gemv_t")(a.reshape(-1), b).view(a.shape[:-1] + b.shape[1:])
    return a @ b


def baddbmm(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``torch.baddbmm(c, a, b)`` (c + a @ b, batched), through the compiled one-row products where
    each of the batch's products is one row (decoding) and :func:`_compiled_gemv` holds, else
    through float32 where :func:`emulated_low_precision` (either way the sum is rounded once, not
    the product first)."""
    G, rows, _ = a.shape
    if rows == 1 and b.dim() == 3 and c.numel() == G * b.shape[2] and _compiled_gemv(a[0], b[0]) \
            and b.is_contiguous() and not (torch.is_grad_enabled() and c.requires_grad):
        return cpu_op("gemv_t")(a.reshape(-1), b, c.reshape(-1)).view(G, 1, b.shape[2])
    if emulated_low_precision(a):
        return torch.baddbmm(c.float(), a.float(), b.float()).to(a.dtype)
    return torch.baddbmm(c, a, b)
