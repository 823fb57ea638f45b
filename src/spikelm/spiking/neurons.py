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

On a GPU the multi-step loop runs as two Triton kernels (``spikelm.ops.neuron_scan``: one launch
forward, one backward, the loop over time inside the kernel) when triton is installed; the
per-neuron switch ``scan_backend`` (``"auto"``, ``"triton"``, ``"torch"``) and
:func:`set_scan_backend` force either path.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops import neuron_scan
from .surrogate import ArcTan, Surrogate

__all__ = ["SpikingNeuron", "IFNeuron", "LIFNeuron", "SCAN_BACKENDS", "set_scan_backend"]

# "auto": the Triton scan for CUDA tensors in fp32/bf16/fp16 when triton is importable, else the
# PyTorch loop; "triton": the kernels whatever the device (CPU tensors need TRITON_INTERPRET=1);
# "torch": always the PyTorch loop.
SCAN_BACKENDS = ("auto", "triton", "torch")


def _check_steps(x_seq: Tensor, dim: int) -> None:
    if x_seq.shape[dim] == 0:
        raise ValueError(f"multi_step needs at least one time step along dim {dim}, got shape {tuple(x_seq.shape)}")


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
        # fused: multi_step without a per-step autograd graph (same values, hand-written backward)
        self.fused = True
        # which fused form (see SCAN_BACKENDS); set_scan_backend sets it on every neuron of a model
        self.scan_backend = "auto"

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
        membrane (``x_seq`` without ``dim``). Feed that membrane to the next call to continue.

        The fast path (``self.fused``, the default): the forward loop runs the very same
        ``charge``, step function (``fire``'s forward) and ``reset`` without recording an
        autograd graph (outputs are bit-identical to :meth:`multi_step_reference`), and the
        backward pass is one reverse loop of a single fused multiply-add per step (see
        :class:`_MultiStep`), instead of autograd replaying some ten recorded operations per step.
        On CUDA (``scan_backend``), both loops run inside one Triton kernel each instead
        (:class:`_ScanMultiStep`)."""
        if not self.fused:
            return self.multi_step_reference(x_seq, v, dim)
        _check_steps(x_seq, dim)
        if self._use_scan_kernel(x_seq):
            v0 = self.initial_v(x_seq.select(dim, 0)) if v is None else v
            if torch.is_grad_enabled() and (x_seq.requires_grad or v0.requires_grad):
                return _ScanMultiStep.apply(x_seq, v0, self, dim % x_seq.dim())
            spikes, v_last, _ = neuron_scan.neuron_scan_forward(x_seq, v0, dim, keep_u=False, **self.scan_spec())
            return spikes, v_last
        x0 = x_seq.movedim(dim, 0)
        v0 = self.initial_v(x0[0]) if v is None else v
        if torch.is_grad_enabled() and (x0.requires_grad or v0.requires_grad):
            spikes, v_last = _MultiStep.apply(x0, v0, self)
        else:
            spikes, v_last, _ = self._loop(x0, v0, keep_u=False)
        return spikes.movedim(0, dim), v_last

    def multi_step_reference(self, x_seq: Tensor, v: Tensor | None = None, dim: int = 0) -> tuple[Tensor, Tensor]:
        """``step`` in a plain loop with autograd recording every operation: the naive twin of
        the fused :meth:`multi_step`, which the tests compare it with (values and gradients)."""
        _check_steps(x_seq, dim)
        spikes = []
        for x in x_seq.unbind(dim):  # each x: x_seq.shape without dim
            s, v = self.step(x, v)
            spikes.append(s)
        assert v is not None
        return torch.stack(spikes, dim), v

    def _loop(self, x0: Tensor, v: Tensor, keep_u: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """Forward along dim 0 with no graph: (spikes, final membrane, pre-spike membranes or None).

        Per step only what must be sequential: ``charge``, one comparison and ``reset_fired`` (a
        select), about five aten ops; spikes stay boolean until one conversion after the loop.
        ``u >= threshold`` is ``step_function(u - threshold)`` (fire's forward) for finite u: a
        float difference is >= 0 exactly when u >= threshold (gradual underflow)."""
        fired, us = [], []
        with torch.no_grad():
            for x in x0.unbind(0):
                u = self.charge(x, v)
                f = u >= self.threshold
                v = self.reset_fired(u, f)
                fired.append(f)
                if keep_u:
                    us.append(u)
        return torch.stack(fired).to(x0.dtype), v, (torch.stack(us) if keep_u else None)

    def reset_fired(self, u: Tensor, fired: Tensor) -> Tensor:
        """``reset(u, s)`` for boolean spikes, without a graph: the same values as ``reset``."""
        return self.reset(u, fired.to(u.dtype))

    def charge_coefficients(self) -> tuple[float, float]:
        """(du/dv, du/dx) of ``charge``: both neurons charge affinely."""
        raise NotImplementedError

    def scan_spec(self) -> dict | None:
        """Keyword arguments of ``neuron_scan.neuron_scan_forward`` describing this neuron, or
        None when the kernel cannot express it (then only the PyTorch loop runs)."""
        return None

    def _use_scan_kernel(self, x_seq: Tensor) -> bool:
        if self.scan_backend not in SCAN_BACKENDS:
            raise ValueError(f"scan_backend must be one of {SCAN_BACKENDS}, got {self.scan_backend!r}")
        if self.scan_backend == "torch":
            return False
        usable = neuron_scan.HAS_TRITON and self.scan_spec() is not None and x_seq.dtype in neuron_scan.SCAN_DTYPES
        if self.scan_backend == "triton":
            if not usable:
                raise ValueError(
                    f"scan_backend='triton' needs triton installed (pip install spikelm[gpu]), an IF/LIF neuron and "
                    f"an fp32/bf16/fp16 input; got {type(self).__name__} with {x_seq.dtype}"
                )
            return True
        return usable and x_seq.is_cuda

    def reset_derivatives(self, u: Tensor, s: Tensor) -> tuple[Tensor | float, Tensor | float]:
        """(dv_new/du, dv_new/ds) of ``reset`` at (u, s); dv_new/ds = 0 when ``detach_reset``."""
        raise NotImplementedError

    def forward(self, x: Tensor, v: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.time_dim is None:
            return self.step(x, v)
        return self.multi_step(x, v, self.time_dim)


class _MultiStep(torch.autograd.Function):
    """A neuron stepped along dim 0, with a hand-written backward pass.

    With ``u_t = a v_{t-1} + b x_t + c`` (charge), ``s_t = H(u_t - theta)`` (fire, surrogate
    derivative ``g_t``) and ``v_t = reset(u_t, s_t)``, the chain rule gives, for the gradient
    ``G_t`` reaching ``u_t``::

        G_t = P_t + Q_t * a * G_{t+1}      P_t = dL/ds_t * g_t,  Q_t = dv_t/du_t + dv_t/ds_t * g_t

    (with ``a * G_{T+1}`` read as the gradient of the final membrane), then ``dL/dx_t = b G_t``
    and ``dL/dv_0 = a G_1``. P and Q are computed for all steps at once; only the recurrence
    itself loops, one fused multiply-add per step. Same gradients as autograd through
    ``multi_step_reference`` (tested), which records about ten operations per step.
    """

    @staticmethod
    def forward(ctx, x0: Tensor, v0: Tensor, neuron: SpikingNeuron) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        spikes, v_last, u = neuron._loop(x0, v0, keep_u=True)
        ctx.save_for_backward(u, spikes)
        ctx.neuron = neuron
        return spikes, v_last

    @staticmethod
    def backward(ctx, g_spikes: Tensor | None, g_v: Tensor | None) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        u, spikes = ctx.saved_tensors
        neuron: SpikingNeuron = ctx.neuron
        a, b = neuron.charge_coefficients()
        g = neuron.surrogate.derivative(u - neuron.threshold)
        dv_du, dv_ds = neuron.reset_derivatives(u, spikes)
        q = dv_du + dv_ds * g  # Q_t, a tensor (g is one)
        p = g_spikes * g if g_spikes is not None else torch.zeros_like(u)
        grad_u = torch.empty_like(u)
        if g_v is not None:
            torch.addcmul(p[-1], q[-1], g_v, out=grad_u[-1])
        else:
            grad_u[-1] = p[-1]
        aq = q.mul_(a)
        ps, aqs, gs = p.unbind(0), aq.unbind(0), grad_u.unbind(0)  # views made once, not per step
        for t in range(u.shape[0] - 2, -1, -1):
            torch.addcmul(ps[t], aqs[t], gs[t + 1], out=gs[t])
        return grad_u * b, grad_u[0] * a, None


class _ScanMultiStep(torch.autograd.Function):
    """A neuron stepped along ``dim`` by the Triton kernels of ``ops/neuron_scan.py``.

    The same derivation as :class:`_MultiStep`: P and Q are computed here for all steps at once,
    and the recurrence ``G_t = P_t + A_t G_{t+1}`` runs in one kernel launch, with ``A_t = a Q_t``
    and, for the last step, ``A_{T-1} = Q_{T-1}`` against the carry-in ``G_T`` = the gradient of
    the final membrane (``grad_u[-1] = p[-1] + q[-1] * g_v`` in ``_MultiStep``).
    """

    @staticmethod
    def forward(ctx, x: Tensor, v0: Tensor, neuron: SpikingNeuron, dim: int) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        spikes, v_last, u = neuron_scan.neuron_scan_forward(x, v0, dim, keep_u=True, **neuron.scan_spec())
        ctx.save_for_backward(u, spikes)
        ctx.neuron, ctx.dim = neuron, dim
        return spikes, v_last

    @staticmethod
    def backward(ctx, g_spikes: Tensor | None, g_v: Tensor | None) -> tuple[Tensor, Tensor, None, None]:  # type: ignore[override]
        u, spikes = ctx.saved_tensors
        neuron: SpikingNeuron = ctx.neuron
        dim = ctx.dim
        a, b = neuron.charge_coefficients()
        g = neuron.surrogate.derivative(u - neuron.threshold)
        dv_du, dv_ds = neuron.reset_derivatives(u, spikes)
        q = dv_du + dv_ds * g  # Q_t (a fresh tensor: g is one)
        q.narrow(dim, 0, u.shape[dim] - 1).mul_(a)  # A_t = a Q_t except the last step
        p = g_spikes * g if g_spikes is not None else torch.zeros_like(u)
        grad_u = neuron_scan.reverse_linear_scan(p, q, g_v, dim)
        return grad_u * b, grad_u.select(dim, 0) * a, None, None


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

    def reset_fired(self, u: Tensor, fired: Tensor) -> Tensor:
        return torch.where(fired, u - self.threshold, u)  # u - theta * 1 and u - theta * 0 = u

    def charge_coefficients(self) -> tuple[float, float]:
        return 1.0, 1.0

    def scan_spec(self) -> dict | None:
        return {"charge": "if", "threshold": self.threshold, "reset": "subtract"}

    def reset_derivatives(self, u: Tensor, s: Tensor) -> tuple[Tensor | float, Tensor | float]:
        return 1.0, (0.0 if self.detach_reset else -self.threshold)

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
        if self.v_reset == 0.0:  # v - 0 is v exactly: one operation fewer per step, same values
            return v + self.beta * (x - v)
        return v + self.beta * (x - (v - self.v_reset))

    def reset(self, u: Tensor, s: Tensor) -> Tensor:
        s = s.detach() if self.detach_reset else s
        if self.reset_mode == "zero":
            return u * (1 - s) + self.v_reset * s
        return u - self.threshold * s

    def reset_fired(self, u: Tensor, fired: Tensor) -> Tensor:
        # the values of reset() for s in {0, 1} (u * 0 + v_reset = v_reset and u * 1 + 0 = u, for finite u)
        if self.reset_mode == "zero":
            return torch.where(fired, self.v_reset, u)
        return torch.where(fired, u - self.threshold, u)

    def charge_coefficients(self) -> tuple[float, float]:
        return 1.0 - self.beta, self.beta

    def scan_spec(self) -> dict | None:
        # the kernel's charge v + beta * (x - (v - v_reset)) is charge() bit for bit: v - 0.0 == v
        return {"charge": "lif", "beta": self.beta, "v_reset": self.v_reset, "threshold": self.threshold, "reset": self.reset_mode}

    def reset_derivatives(self, u: Tensor, s: Tensor) -> tuple[Tensor | float, Tensor | float]:
        if self.reset_mode == "zero":  # v_new = u (1 - s) + v_reset s
            return 1 - s, (0.0 if self.detach_reset else self.v_reset - u)
        return 1.0, (0.0 if self.detach_reset else -self.threshold)

    def extra_repr(self) -> str:
        return (
            f"beta={self.beta}, threshold={self.threshold}, reset={self.reset_mode!r}, v_reset={self.v_reset}, "
            f"surrogate={self.surrogate!r}, detach_reset={self.detach_reset}, time_dim={self.time_dim}"
        )


def set_scan_backend(module: nn.Module, backend: str) -> None:
    """Set ``scan_backend`` (one of :data:`SCAN_BACKENDS`) on every spiking neuron in ``module``."""
    if backend not in SCAN_BACKENDS:
        raise ValueError(f"scan backend must be one of {SCAN_BACKENDS}, got {backend!r}")
    for m in module.modules():
        if isinstance(m, SpikingNeuron):
            m.scan_backend = backend
