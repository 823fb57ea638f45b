"""Fused scans for the IF/LIF multi-step loop: one Triton kernel launch per direction.

SpikeGPT steps its LIF neurons along the token axis (T = 1024 in the GPU configs). The PyTorch
form of that loop (``SpikingNeuron.multi_step`` in ``spiking/neurons.py``) issues about five aten
ops per time step forward and one per step backward, so a 12-layer micro-step is tens of
thousands of tiny kernel launches on a GPU. Here each direction is a single kernel: one program
per block of neurons, with the loop over T *inside* the kernel and the membrane held in fp32
registers.

* :func:`neuron_scan_forward`: charge, fire, reset for every step; writes the spikes, the
  pre-spike membranes ``u`` (the backward pass needs them) and the final membrane.
      charge  ``u = v + x``                                    (IF, SpikeRWKV eq. 1)
              ``u = v + beta * (x - (v - v_reset))``           (LIF, SpikeGPT eq. 13)
      fire    ``s = [u >= threshold]``
      reset   ``v = u - threshold`` where fired ("subtract")  or  ``v = v_reset`` ("zero")
  Each expression is evaluated in the same order as ``IFNeuron.charge`` / ``LIFNeuron.charge``
  and ``reset_fired``, and the kernel is compiled with floating-point contraction off
  (``enable_fp_fusion=False``), so on fp32 inputs every value equals the PyTorch loop bit for bit
  (an FMA would round ``v + beta * (...)`` once instead of twice). bf16/fp16 inputs are loaded
  into an fp32 state, which is *more* accurate than the PyTorch loop in that dtype (it rounds the
  membrane to bf16 every step), so the two then differ in the last bits and occasionally in a spike.
* :func:`reverse_linear_scan`: ``G_t = P_t + A_t * G_{t+1}`` backwards over T from ``G_T = h``,
  the only sequential part of the neuron's backward pass. P and A are computed in PyTorch from the
  saved ``u`` (see ``_ScanMultiStep`` in ``spiking/neurons.py``), so any surrogate works unchanged.

Layout: the time axis is any dimension ``dim`` of a contiguous tensor, read in place as
``(outer, T, inner)``; neuron ``n`` is ``(n // inner, n % inner)``, so consecutive programs read
consecutive memory along ``inner`` (the channels, for SpikeGPT's (B, T, C)) and nothing is copied
or transposed.

Triton is optional (``pip install spikelm[gpu]``) and imported only when a kernel is first used.
``TRITON_INTERPRET=1`` in the environment *before that first use* runs the kernels on CPU tensors
through Triton's interpreter, which is how the CPU test suite checks them against the loop.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from typing import Any

import torch
from torch import Tensor

__all__ = ["HAS_TRITON", "SCAN_DTYPES", "neuron_scan_forward", "reverse_linear_scan"]

HAS_TRITON = importlib.util.find_spec("triton") is not None
SCAN_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_BLOCK = 128  # neurons per program: small blocks give more programs to hide the per-step load latency
_CHARGE = {"if": 0, "lif": 1}
_RESET = {"subtract": 0, "zero": 1}


@functools.lru_cache(maxsize=None)
def _kernels() -> Any:
    """Define the kernels on first use (importing triton costs time and it is optional)."""
    import triton
    import triton.language as tl

    @triton.jit
    def forward_kernel(
        x_ptr, v0_ptr, s_ptr, u_ptr, v_ptr, n, T, inner, beta, v_reset, threshold,
        CHARGE: tl.constexpr, RESET: tl.constexpr, STORE_U: tl.constexpr, BLOCK: tl.constexpr,
    ):
        offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
        mask = offs < n
        base = (offs // inner) * T * inner + offs % inner  # element (o, 0, i)
        v = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        for t in range(T):
            p = base + t * inner
            x = tl.load(x_ptr + p, mask=mask, other=0.0).to(tl.float32)
            if CHARGE == 0:
                u = v + x
            else:
                u = v + beta * (x - (v - v_reset))
            fired = u >= threshold
            # bool -> fp32 -> output dtype: the same value, and Triton's interpreter cannot cast bool to bf16
            tl.store(s_ptr + p, fired.to(tl.float32).to(s_ptr.dtype.element_ty), mask=mask)
            if STORE_U:
                tl.store(u_ptr + p, u.to(u_ptr.dtype.element_ty), mask=mask)
            if RESET == 0:
                v = tl.where(fired, u - threshold, u)
            else:
                v = tl.where(fired, v_reset, u)
        tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def reverse_kernel(p_ptr, a_ptr, h_ptr, g_ptr, n, T, inner, HAS_H: tl.constexpr, BLOCK: tl.constexpr):
        offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
        mask = offs < n
        base = (offs // inner) * T * inner + offs % inner
        if HAS_H:
            h = tl.load(h_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            h = tl.zeros([BLOCK], dtype=tl.float32)
        for k in range(T):
            p = base + (T - 1 - k) * inner
            h = tl.load(p_ptr + p, mask=mask, other=0.0).to(tl.float32) + tl.load(a_ptr + p, mask=mask, other=0.0).to(tl.float32) * h
            tl.store(g_ptr + p, h.to(g_ptr.dtype.element_ty), mask=mask)

    return forward_kernel, reverse_kernel


def _layout(x: Tensor, dim: int) -> tuple[int, int, int]:
    dim = dim % x.dim()
    return math.prod(x.shape[:dim]), x.shape[dim], math.prod(x.shape[dim + 1 :])


def neuron_scan_forward(
    x: Tensor,
    v0: Tensor,
    dim: int,
    *,
    charge: str,
    threshold: float,
    reset: str,
    beta: float = 1.0,
    v_reset: float = 0.0,
    keep_u: bool = True,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """IF/LIF neurons stepped along ``dim`` of ``x`` from membrane ``v0`` (``x`` without ``dim``).

    Returns (spikes shaped like ``x``, final membrane shaped like ``v0``, pre-spike membranes
    ``u`` shaped like ``x`` or None), all in ``x``'s and ``v0``'s promoted dtype, as the PyTorch
    loop gives them. ``charge`` is ``"if"`` or ``"lif"``, ``reset`` ``"subtract"`` or ``"zero"``.
    """
    outer, T, inner = _layout(x, dim)
    dtype = torch.promote_types(x.dtype, v0.dtype)
    x = x.contiguous()
    v0 = v0.expand(x.select(dim, 0).shape).contiguous()
    spikes = torch.empty(x.shape, dtype=dtype, device=x.device)
    u = torch.empty_like(spikes) if keep_u else None
    v_last = torch.empty(v0.shape, dtype=dtype, device=x.device)
    n = outer * inner
    if n:
        forward_kernel, _ = _kernels()
        forward_kernel[(-(-n // _BLOCK),)](
            x, v0, spikes, u if u is not None else spikes, v_last, n, T, inner,
            float(beta), float(v_reset), float(threshold),
            CHARGE=_CHARGE[charge], RESET=_RESET[reset], STORE_U=keep_u, BLOCK=_BLOCK,
            num_warps=4, enable_fp_fusion=False,  # no FMA contraction: fp32 values equal the PyTorch loop's
        )
    return spikes, v_last, u


def reverse_linear_scan(p: Tensor, a: Tensor, h: Tensor | None, dim: int) -> Tensor:
    """``G_t = P_t + A_t * G_{t+1}`` for t = T-1 .. 0 along ``dim``, with ``G_T = h`` (zero when
    None); the carry is fp32 and ``G`` comes back in ``p``'s dtype, shaped like ``p``."""
    outer, T, inner = _layout(p, dim)
    p, a = p.contiguous(), a.contiguous()
    if h is not None:
        h = h.expand(p.select(dim, 0).shape).contiguous()
    g = torch.empty_like(p, memory_format=torch.contiguous_format)
    n = outer * inner
    if n:
        _, reverse_kernel = _kernels()
        reverse_kernel[(-(-n // _BLOCK),)](
            p, a, h if h is not None else p, g, n, T, inner, HAS_H=h is not None, BLOCK=_BLOCK, num_warps=4
        )
    return g
