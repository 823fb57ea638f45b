"""Scratch initialisation helpers shared by the RWKV model files.

RWKV-LM draws its weight matrices with ``nn.init.orthogonal_(w, gain)``. An orthogonal (out, in)
matrix has entries of variance ``1 / max(out, in)`` (its columns, or rows, are unit vectors), so
:func:`orthogonal_like` draws a normal with variance ``gain^2 / max(out, in)``: the same second
moments, much cheaper for a (65536, C) head. :func:`tall_gain` is the code's gain for a body
matrix, ``sqrt(out / in)`` when it has more rows than columns, else 1.

The trap this module exists for: the head's gain ``0.5 sqrt(V / C)`` (RWKV-5/6/7; RWKV-4 reaches
the same product as ``0.5 x tall_gain``) already contains the tall factor; multiplying it in again
gave logits of standard deviation ``0.5 V / C`` instead of 0.5 (16 for V = 65536, C = 64: an
initial loss of 64 nats where a uniform guess costs 11).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["orthogonal_like", "tall_gain", "head_gain"]


def orthogonal_like(w: Tensor, gain: float, generator: torch.Generator | None = None) -> None:
    """Fill ``w`` (out, in) in place with a normal of the entry variance of ``orthogonal_(w, gain)``."""
    fan_out, fan_in = w.shape
    w.copy_(torch.randn(w.shape, generator=generator) * (gain / math.sqrt(max(fan_out, fan_in))))


def tall_gain(w: Tensor) -> float:
    """RWKV-LM's gain for a body matrix: ``sqrt(out / in)`` for a tall one, else 1."""
    fan_out, fan_in = w.shape
    return math.sqrt(max(1.0, fan_out / fan_in))


def head_gain(vocab_size: int, n_embd: int) -> float:
    """The head's orthogonal gain: ``0.5 sqrt(V / C)`` when V > C, else 0.5 (logits of std ~0.5)."""
    return 0.5 * math.sqrt(vocab_size / n_embd) if vocab_size > n_embd else 0.5
