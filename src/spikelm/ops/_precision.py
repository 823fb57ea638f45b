"""The WKV recurrences' one precision rule: float32 (float64 when given float64), never autocast.

Autocast lowers matmuls to bfloat16 / float16. That is fine for a linear layer but not for a
recurrence: the chunked WKV6's float32 matmuls lost three digits under bfloat16 autocast (error
3.3e-3 instead of 8.7e-8), and under float16 a state past 65504 turned most outputs into inf/NaN.
So every WKV entry point runs with autocast switched off for its device and casts its inputs
explicitly (each op's own ``.to(cdt)``); outputs come back in the input's dtype as documented.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable)


def outside_autocast(fn: F) -> F:
    """Run ``fn`` with autocast disabled on the device of its first (tensor) argument."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        dev = args[0].device.type
        if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
            with torch.autocast(device_type=dev, enabled=False):
                return fn(*args, **kwargs)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
