"""Spiking neurons with explicit state: Integrate-and-Fire (SpikeRWKV) and Leaky IF (SpikeGPT).

Every neuron update is three separate steps, each a method, so that a reader (or a test) can look
at any of them alone:

    u = charge(x, v)     membrane after integrating the input, before any spike
    s = fire(u)          s = H(u - threshold), exact step forward, surrogate derivative backward
    v = reset(u, s)      membrane carried to the next time step

The membrane ``v`` is never stored on the module: ``step(x, v) -> (s, v_new)`` takes it and gives it
back, ``v=None`` meaning "fresh neuron". Modules hold only constants, so one instance can serve any
batch, a recurrent decoder can carry ``v`` between calls, and running a sequence in two halves with
the state carried equals running it at once.

``multi_step(x_seq, v, dim)`` loops ``step`` over a time axis. SpikeGPT uses the *token* axis as
spiking time: an input of shape (B, T, C) is stepped along ``dim=1``. ``forward`` is ``step`` when
``time_dim`` is None and ``multi_step`` along ``time_dim`` otherwise, so forward hooks (used by the
energy counters) see the spikes whichever way the neuron is driven.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .surrogate import ArcTan, Surrogate

__all__ = ["SpikingNeuron", "IFNeuron", "LIFNeuron"]


class SpikingNeuron(nn.Module):
    """Shared driver: ``step`` = charge, fire, reset; ``multi_step`` = ``step`` along a time axis.

    Subclasses implement ``charge`` and ``reset`` and say what a fresh membrane is (``initial_v``).
    """

    def __init__(self, threshold: float, surrogate: Surrogate | None, detach_reset: bool, time_dim: int | None) -> None:
        super().__init__()
        self.threshold = float(threshold)
        self.surrogate = surrogate if surrogate is not None else ArcTan()
        # detach_reset: the reset uses the spike value but no gradient flows through it (a common
        # simplification that removes the "spike lowers the next membrane" path from backprop).
        self.detach_reset = bool(detach_reset)
        self.time_dim = time_dim

    def initial_v(self, x: Tensor) -> Tensor:
        """Membrane of a fresh neuron, shaped like one time step of input."""
        return torch.zeros_like(x)

    def charge(self, x: Tensor, v: Tensor) -> Tensor:
        raise NotImplementedError

    def fire(self, u: Tensor) -> Tensor:
        """``s = H(u - threshold)`` with ``H(0) = 1`` (see surrogate.py); float spikes in u's dtype."""
        return self.surrogate(u - self.threshold)

    def reset(self, u: Tensor, s: Tensor) -> Tensor:
        raise NotImplementedError

    def step(self, x: Tensor, v: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One time step: ``x`` and ``v`` of the same shape -> (spikes, new membrane)."""
        if v is None:
            v = self.initial_v(x)
        u = self.charge(x, v)
        s = self.fire(u)
        return s, self.reset(u, s)

    def multi_step(self, x_seq: Tensor, v: Tensor | None = None, dim: int = 0) -> tuple[Tensor, Tensor]:
        """Step through ``x_seq`` along ``dim``; returns spikes shaped like ``x_seq`` and the final
        membrane (``x_seq`` without ``dim``). Feed that membrane to the next call to continue."""
        if x_seq.shape[dim] == 0:
            raise ValueError(f"multi_step needs at least one time step along dim {dim}, got shape {tuple(x_seq.shape)}")
        spikes = []
        for x in x_seq.unbind(dim):  # each x: x_seq.shape without dim
            s, v = self.step(x, v)
            spikes.append(s)
        assert v is not None
        return torch.stack(spikes, dim), v

    def forward(self, x: Tensor, v: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.time_dim is None:
            return self.step(x, v)
        return self.multi_step(x, v, self.time_dim)


class IFNeuron(SpikingNeuron):
    """Integrate-and-Fire with soft reset, SpikeRWKV eq. (1)-(2).

    Eq. (1) folds the three steps into ``v^j = v^{j-1} + I^j - theta * d^j``, with input current
    ``I^j = W theta_{prev} d_prev^j`` and ``d^j = H(u^j - theta)`` (eq. 2) where
    ``u^j = v^{j-1} + I^j``. Here: charge ``u = v + x``; fire ``s = H(u - theta)``; reset by
    subtraction ``v = u - theta * s``. Subtracting (instead of zeroing) keeps the part of the
    membrane above threshold, which is why IF rates are an unbiased code for the input in ANN-to-SNN
    conversion; the multi-head spike encoding is a cascade of exactly such neurons.
    """

    def __init__(
        self,
        threshold: float = 1.0,
        surrogate: Surrogate | None = None,
        detach_reset: bool = False,
        time_dim: int | None = None,
    ) -> None:
        super().__init__(threshold, surrogate, detach_reset, time_dim)

    def charge(self, x: Tensor, v: Tensor) -> Tensor:
        return v + x

    def reset(self, u: Tensor, s: Tensor) -> Tensor:
        s = s.detach() if self.detach_reset else s
        return u - self.threshold * s

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, surrogate={self.surrogate!r}, time_dim={self.time_dim}"


class LIFNeuron(SpikingNeuron):
    """Leaky Integrate-and-Fire, SpikeGPT eq. (13), hard reset to ``v_reset = 0`` by default.

    The paper prints

        U[t] = H[t] + beta (Y[t] - (H[t-1] - U_reset))
        S[t] = Theta(U[t] - U_threshold)
        H[t] = U[t] (1 - S[t])

    where ``U`` is the membrane before the spike, ``H`` after the reset, ``Y`` the input. As printed
    the first line uses ``H[t]`` to define ``U[t]`` while ``H[t]`` itself comes from ``U[t]``; the
    only consistent reading (and the SpikingJelly ``LIFNode`` with ``tau = 1/beta`` that the SpikeGPT
    code uses, ``tau = 2``, ``v_threshold = 1``, ``v_reset = 0``) reads the leading term as
    ``H[t-1]``:

        charge  U[t] = H[t-1] + beta * (Y[t] - (H[t-1] - U_reset))   = (1-beta) H[t-1] + beta Y[t]  (U_reset = 0)
        fire    S[t] = H(U[t] - U_threshold)
        reset   H[t] = U[t] * (1 - S[t]) + U_reset * S[t]              ("zero": hard reset)
             or H[t] = U[t] - U_threshold * S[t]                       ("subtract": soft reset)

    So the membrane leaks towards ``U_reset`` and the input is scaled by ``beta`` too ("decay the
    input"): a constant input ``Y`` drives the membrane to ``Y`` (not ``Y / beta``), and with
    threshold 1 a neuron needs ``Y > 1`` to keep firing. ``beta = 0.5`` (``tau = 2``) matches the
    SpikeGPT code. A fresh membrane starts at ``U_reset``.
    """

    def __init__(
        self,
        beta: float = 0.5,
        threshold: float = 1.0,
        reset: str = "zero",
        v_reset: float = 0.0,
        surrogate: Surrogate | None = None,
        detach_reset: bool = False,
        time_dim: int | None = None,
    ) -> None:
        super().__init__(threshold, surrogate, detach_reset, time_dim)
        if not 0.0 < beta <= 1.0:
            raise ValueError(f"LIF decay beta must be in (0, 1], got {beta!r}")
        if reset not in ("zero", "subtract"):
            raise ValueError(f"LIF reset must be 'zero' (hard, SpikeGPT eq. 13) or 'subtract', got {reset!r}")
        self.beta = float(beta)
        self.reset_mode = reset
        self.v_reset = float(v_reset)

    def initial_v(self, x: Tensor) -> Tensor:
        return torch.full_like(x, self.v_reset)

    def charge(self, x: Tensor, v: Tensor) -> Tensor:
        return v + self.beta * (x - (v - self.v_reset))

    def reset(self, u: Tensor, s: Tensor) -> Tensor:
        s = s.detach() if self.detach_reset else s
        if self.reset_mode == "zero":
            return u * (1 - s) + self.v_reset * s
        return u - self.threshold * s

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, threshold={self.threshold}, reset={self.reset_mode!r}, v_reset={self.v_reset}, "
            f"surrogate={self.surrogate!r}, detach_reset={self.detach_reset}, time_dim={self.time_dim}"
        )
