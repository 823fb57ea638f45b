"""Spike encoders' ops with more than one implementation: decoding over T > 1 steps, and the level
histogram.

:func:`decode_steps` is the general path of ``spikelm.spiking.encoding.mhse_decode`` (rate codes,
and MHSE over T > 1 steps; op ``mhse_decode`` of :mod:`.backend`): some ten float64 passes over
memory, which ``torch.compile`` fuses into one (``auto``; the same float operations in the same
order, so the same bits).

:func:`level_histogram` (op ``level_histogram``) counts a one-step encoder's codes for the energy
counter in one parallel C++ pass with per-thread histograms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import Backend, compiled, resolve
from .kernels import op as cpp_op

__all__ = ["decode_steps", "level_histogram"]


def _decode_steps(x: Tensor, scale: Tensor, s: Tensor, T: int, layers: int, n_int: int, init_half: bool,
                  a_max: float) -> Tensor:
    if (x.dtype in (torch.float32, torch.bfloat16, torch.float16)) and scale.dtype == torch.float32:
        # the float32 quotient is the float64 one rounded to float32 (Figueroa 1995), in fewer passes
        a = (x.float().abs_() if x.dtype != torch.float32 else x.abs()).div_(scale.detach().to(x.device))
    else:
        a = x.to(torch.float64).abs_().div_(s).to(torch.float32)  # x.shape, the magnitude a
    a.clamp_(max=a_max)
    q = a.to(torch.float64).mul_(2.0 ** (layers - n_int))  # units of w_l
    if T != 1:
        q.mul_(T)
    if init_half:
        q.add_(0.5)
    q.floor_()  # q_T: units emitted over the T steps
    q.mul_(2.0 ** (n_int - layers)).div_(T).mul_(s)  # eq. (3): s * w_l * q_T / T
    return q.copysign_(x).to(x.dtype)  # the sign bit-wise (a -0.0 input decodes to -0.0)


def decode_steps(x: Tensor, scale: Tensor, s: Tensor, T: int, layers: int, n_int: int, init_half: bool, a_max: float,
                 backend: Backend = None) -> Tensor:
    """The decoded values ``copysign(s w_l floor(T min(|x| / s, a_max) / w_l [+ 1/2]) / T, x)``, base 2.

    ``scale``: the encoder's scale tensor (float32, or any dtype: then ``s``, the scale as float64
    broadcast to x, is used); ``|x| / s`` is a float32 quotient, everything after it float64,
    rounded once to x's dtype."""
    how = resolve("mhse_decode", backend, x, cpp_ok=False)
    return (compiled(_decode_steps) if how == "compile" else _decode_steps)(x, scale, s, T, layers, n_int, init_half,
                                                                             a_max)


def level_histogram(q: Tensor, x: Tensor, unit: Tensor, layers: int,
                    backend: Backend = None) -> tuple[list[int], int, int] | None:
    """(counts of the codes ``q + 2**layers [x < 0]``, clipped values, NaN levels) from the C++
    kernel, or None where the backend or the inputs do not take it (the energy counter then counts
    with its tensor operations, ``spikelm.energy.spike_counts``, the twin).

    ``q``: float32 integer levels in ``[0, 2**layers)`` (a spike encoder's, see
    ``spikelm.spiking.encoding.mhse_decode``); ``x``: the encoder's input (float32, bf16 or fp16,
    as many values); ``unit``: ``s w_l`` (float32, one value or one per channel of x's last
    dimension). A value is clipped where its level is the top one and ``|x| / unit`` (a float32
    division) exceeds ``2**layers - 1``, as the encoder decides it.
    """
    ok = (q.dtype == torch.float32 and x.device.type == "cpu" and unit.device.type == "cpu"
          and x.dtype in (torch.float32, torch.bfloat16, torch.float16) and q.numel() == x.numel()
          and unit.numel() in (1, x.shape[-1] if x.dim() else 1) and layers <= 16)
    if resolve("level_histogram", backend, q, ok) != "cpp":
        return None
    out = cpp_op("level_histogram")(q.contiguous(), x.contiguous(),
                                    unit.detach().to(torch.float32).contiguous().reshape(-1), layers).tolist()
    return out[:-2], out[-2], out[-1]
