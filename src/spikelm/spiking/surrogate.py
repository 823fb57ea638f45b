"""Spike functions: an exact Heaviside step forward, a smooth surrogate derivative backward.

A spiking neuron fires when its membrane reaches the threshold, ``s = H(u - theta)``. The step
``H`` has zero derivative almost everywhere, so gradient descent through it learns nothing. The
surrogate-gradient trick (SpikeGPT, sections 3.2 and 3.4) keeps the exact step in the forward pass
and, in the backward pass only, pretends the step was a smooth sigmoid-like *primitive* ``g`` and
uses ``g'``. Every surrogate here is therefore a named smooth function with two methods,
``primitive(x)`` (the function whose derivative is used) and ``derivative(x)``; the test suite
checks the autograd gradient against a finite difference of ``primitive``.

Convention at zero: ``H(0) = 1``. A membrane exactly at threshold fires, matching the IF neuron of
SpikeRWKV (eq. 2, ``d = H(u - theta)`` with "fire when u reaches theta") and the cascade of the
multi-head spike encoding, where a residual equal to a layer's weight must fire for the encoding to
be exact (see ``encoding.py``).

ArcTan, SpikeGPT eq. (1). The paper prints ``sigma'(x) = (1/pi) arctan(pi x) + 1/2``; despite the
prime, that expression is the sigmoid-like *primitive* (its range is (0, 1)), and its derivative
``1 / (1 + (pi x)^2)`` is what flows backward. With the SpikingJelly parameterisation used by the
SpikeGPT code (``ATan(alpha=2.0)``)

    g(x)  = (1/pi) * arctan((pi/2) * alpha * x) + 1/2
    g'(x) = (alpha/2) / (1 + ((pi/2) * alpha * x)^2)

the paper's formula is exactly the case ``alpha = 2``, so ``alpha = 2`` is the default and
``g'(0) = alpha / 2 = 1``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Surrogate", "ArcTan", "Sigmoid", "SurrogateSpike", "step_function", "make_surrogate", "heaviside"]


class Surrogate:
    """A smooth stand-in for the Heaviside step: ``primitive`` is the smooth function, ``derivative``
    its exact derivative, and calling the object spikes with that derivative as backward.

    Subclasses set ``name`` and implement ``primitive`` and ``derivative``; instances are immutable
    and hold only their sharpness ``alpha`` (larger alpha: closer to the step, narrower gradient).
    """

    name: str = ""

    def __init__(self, alpha: float) -> None:
        if not alpha > 0:
            raise ValueError(f"surrogate sharpness alpha must be > 0, got {alpha!r}")
        self.alpha = float(alpha)

    def primitive(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def derivative(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        """Spike: ``(x >= 0)`` in ``x.dtype`` forward, ``grad * derivative(x)`` backward."""
        return SurrogateSpike.apply(x, self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(alpha={self.alpha})"


class ArcTan(Surrogate):
    """SpikeGPT eq. (1): primitive ``(1/pi) arctan((pi/2) alpha x) + 1/2`` (alpha = 2 is the paper)."""

    name = "atan"

    def __init__(self, alpha: float = 2.0) -> None:
        super().__init__(alpha)

    def primitive(self, x: Tensor) -> Tensor:
        return torch.atan((math.pi / 2) * self.alpha * x) / math.pi + 0.5

    def derivative(self, x: Tensor) -> Tensor:
        return (self.alpha / 2) / (1 + ((math.pi / 2) * self.alpha * x) ** 2)


class Sigmoid(Surrogate):
    """Logistic primitive ``sigmoid(alpha x)``; derivative ``alpha * g * (1 - g)`` (peak alpha/4)."""

    name = "sigmoid"

    def __init__(self, alpha: float = 4.0) -> None:
        super().__init__(alpha)

    def primitive(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.alpha * x)

    def derivative(self, x: Tensor) -> Tensor:
        g = torch.sigmoid(self.alpha * x)
        return self.alpha * g * (1 - g)


def step_function(x: Tensor) -> Tensor:
    """``H(x)`` with ``H(0) = 1``, as float spikes in x's dtype: the forward of every surrogate."""
    return (x >= 0).to(x.dtype)


class SurrogateSpike(torch.autograd.Function):
    """Exact step forward; the given surrogate's derivative backward."""

    @staticmethod
    def forward(ctx, x: Tensor, surrogate: Surrogate) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return step_function(x)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.derivative(x), None


def make_surrogate(name: str = "atan", alpha: float | None = None) -> Surrogate:
    """Build a surrogate by name (``atan`` or ``sigmoid``); ``alpha=None`` takes its default."""
    if name == "atan":
        return ArcTan() if alpha is None else ArcTan(alpha)
    if name == "sigmoid":
        return Sigmoid() if alpha is None else Sigmoid(alpha)
    raise ValueError(f"unknown surrogate {name!r}; choose 'atan' or 'sigmoid'")


def heaviside(x: Tensor, surrogate: str | Surrogate = "atan", alpha: float | None = None) -> Tensor:
    """``H(x) = (x >= 0)`` as ``x.dtype``, differentiable through ``surrogate`` (default ArcTan, alpha 2)."""
    fn = surrogate if isinstance(surrogate, Surrogate) else make_surrogate(surrogate, alpha)
    return fn(x)
