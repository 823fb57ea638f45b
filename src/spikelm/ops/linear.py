"""Matrix products of bf16/fp16 tensors on CPUs that have no native low-precision GEMM.

A bf16 matrix product multiplies bf16 values exactly and accumulates in float32 whatever the
hardware; only the speed depends on it. On a CPU with AVX512-BF16 or AMX, oneDNN runs bf16 GEMMs
several times faster than fp32 ones; on one without (AVX2 only), it emulates them several times
*slower* than fp32 (docs/results.md, the bf16 rows). There, a product
of more than one row is computed here as the float32 product of the same bf16 values (exact
products, float32 accumulation: the arithmetic of a bf16 GEMM) and rounded back to the input's
dtype. Weights stay stored in their dtype; a float32 copy of one weight lives for one product.
Single rows (decoding) stay in low precision: a matrix-vector product is bound by memory, where
reading half the bytes wins. There, on any CPU, the C++ one-row product (op ``gemv`` of
:mod:`.backend`: AVX2 widening of the 2-byte weights, float32 sums, one rounding) reads the weights
faster than torch's own path, emulated or native (docs/results.md); with the ``torch`` backend,
without the kernels, or where a gradient is needed, torch's own.

Everything else (float32, CUDA, several rows on a CPU with native bf16 products) goes straight to torch.
The naive twins are ``F.linear`` / ``torch.matmul`` / ``torch.bmm`` / ``torch.baddbmm`` themselves (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backend import Backend, grad_needed, resolve
from .kernels import op as cpp_op

__all__ = ["Linear", "linear", "matmul", "bmm", "baddbmm", "emulated_low_precision", "native_low_precision"]

_LOW = (torch.bfloat16, torch.float16)
_native: dict[torch.dtype, bool] = {}


def native_low_precision(dtype: torch.dtype) -> bool:
    """Does this CPU run ``dtype`` GEMMs natively (oneDNN's own test)?"""
    if dtype not in _native:
        try:
            probe = torch.ops.mkldnn._is_mkldnn_bf16_supported if dtype == torch.bfloat16 \
                else torch.ops.mkldnn._is_mkldnn_fp16_supported
            _native[dtype] = bool(probe())
        except (AttributeError, RuntimeError):  # a torch without these probes: trust torch's own path
            _native[dtype] = True
    return _native[dtype]


def emulated_low_precision(x: Tensor) -> bool:
    """True where a product of ``x`` (bf16/fp16 on a CPU without native support, more than one
    row) is faster as a float32 product of the same values."""
    return (x.dtype in _LOW and x.device.type == "cpu" and x.numel() > x.shape[-1]
            and not native_low_precision(x.dtype))


_BLOCK_FLOATS = 2**24  # a float32 copy of at most 64 MiB of a weight at a time


def _one_row(x: Tensor, weight: Tensor, backend: Backend, bias: Tensor | None = None) -> bool:
    """Whether a product of ``x`` by the matrix ``weight`` takes the C++ one-row product (op
    ``gemv``): one row of a bf16/fp16 product on the CPU (a contiguous matrix of x's dtype, no
    bias, no gradient needed) and the backend says so. Cheapest tests first: this runs before
    every product of a decoding step."""
    ok = (x.numel() == x.shape[-1] and bias is None and weight.dtype == x.dtype and weight.dim() == 2
          and weight.is_contiguous() and not grad_needed(x, weight))
    return x.dtype in _LOW and resolve("gemv", backend, x, ok) == "cpp"


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, backend: Backend = None) -> Tensor:
    """``F.linear(x, weight, bias)``, through float32 where :func:`emulated_low_precision` or where
    ``weight`` is not in x's low-precision dtype, and through the C++ one-row product where
    :func:`_one_row`.

    A large weight (a 65536-word head) is taken in blocks of output rows, so the float32 copy
    that exists at any time stays under 64 MiB whatever the layer's size (a whole head of the
    1B6 model in float32 would be 512 MiB, a sixth of its bf16 weights)."""
    if x.dtype == torch.float32:
        return F.linear(x, weight, bias)
    if _one_row(x, weight, backend, bias):
        return cpp_op("gemv")(x.reshape(-1), weight).view(x.shape[:-1] + weight.shape[:1])
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

    backend: Backend = None  # see spikelm.ops.set_backend

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias, self.backend)


def matmul(a: Tensor, b: Tensor, backend: Backend = None) -> Tensor:
    """``a @ b``, through float32 where :func:`emulated_low_precision`, and through the C++
    one-row product (b in its (in, out) order) where :func:`_one_row`."""
    if emulated_low_precision(a):
        return (a.float() @ b.float()).to(a.dtype)
    if _one_row(a, b, backend):
        return cpp_op("gemv_t")(a.reshape(-1), b).view(a.shape[:-1] + b.shape[1:])
    return a @ b


def baddbmm(c: Tensor | None, a: Tensor, b: Tensor, backend: Backend = None) -> Tensor:
    """``torch.baddbmm(c, a, b)`` (c + a @ b, batched; ``torch.bmm(a, b)`` for c None), through
    the C++ one-row products where each of the batch's products is one row (decoding) and
    :func:`_one_row` holds, else through float32 where :func:`emulated_low_precision` (either way
    the sum is rounded once, not the product first)."""
    G, rows, _ = a.shape
    if rows == 1 and b.dim() == 3 and b.is_contiguous() and (c is None or c.numel() == G * b.shape[2]) \
            and not grad_needed(c) and _one_row(a[0], b[0], backend):
        return cpp_op("gemv_t")(a.reshape(-1), b, None if c is None else c.reshape(-1)).view(G, 1, b.shape[2])
    if emulated_low_precision(a):
        out = torch.bmm(a.float(), b.float()) if c is None else torch.baddbmm(c.float(), a.float(), b.float())
        return out.to(a.dtype)
    return torch.bmm(a, b) if c is None else torch.baddbmm(c, a, b)


def bmm(a: Tensor, b: Tensor, backend: Backend = None) -> Tensor:
    """``torch.bmm(a, b)`` as :func:`baddbmm` takes it (the same low-precision paths)."""
    return baddbmm(None, a, b, backend)
