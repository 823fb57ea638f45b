"""Learned step size (LSQ, Esser et al., ICLR 2020) for the spike codes: the converted model's
decoded value (bit for bit :func:`~.encoding.mhse_decode`) with gradients to the input and to the
scale, for spiking-aware fine-tuning (:mod:`spikelm.train.finetune`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .encoding import _check_exact, mhse_a_max, mhse_decode

__all__ = ["mhse_learned_step", "lsq_grad_scale"]


class _LearnedStep(torch.autograd.Function):
    """LSQ (Esser et al., ICLR 2020) for the spike codes: the decoded value with gradients to the
    input (straight through, zero where clipped) and to the scale (the learned step size).

    Forward: ``mhse_decode`` (bit for bit the value the converted model computes at inference).
    Backward, with ``inside = |x| / s <= A_max`` (the encoder's own float32 quotient) and the
    levels treated as constants (the floor's straight-through estimate)::

        d x_hat / d x = inside
        d x_hat / d s = (x_hat - x) / s      inside the range  (sign * (q w_l / T - |x| / s))
                      = x_hat / s            where clipped     (sign * A_max)

    summed over every value a scale covers and multiplied by the gradient scale ``g``
    (:func:`lsq_grad_scale`). This is the derivative of the *soft* form, in which the emitted
    levels are held at their value and ``|x| / s`` moves: exactly LSQ's ``round(v) - v`` and
    ``Q_p`` terms for the grid ``s w_l / T``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, T: int, layers: int, n_int: int, init_half: bool,  # type: ignore[override]
                grad_scale: float) -> Tensor:
        a_max = mhse_a_max(layers, 2.0, n_int)
        s32 = scale.detach().to(device=x.device, dtype=torch.float32)
        x_hat = mhse_decode(x.detach(), s32, T, layers, n_int, init_half)
        inside = (x.detach().float().abs() / s32) <= a_max  # the encoder's float32 quotient
        if ctx.needs_input_grad[1]:
            # what d x_hat / d s needs, in one tensor: x_hat - x inside the range, x_hat where clipped
            resid = torch.where(inside, x_hat.float() - x.detach().float(), x_hat.float())
            ctx.save_for_backward(inside, resid, s32)
        else:
            ctx.save_for_backward(inside)
        ctx.grad_scale, ctx.scale_shape = grad_scale, scale.shape
        return x_hat

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        saved = ctx.saved_tensors
        inside = saved[0]
        grad_x = grad_out * inside.to(grad_out.dtype) if ctx.needs_input_grad[0] else None
        grad_s = None
        if ctx.needs_input_grad[1]:
            _, resid, s32 = saved
            g = grad_out.float() * resid / s32  # per value
            if len(ctx.scale_shape) == 0:
                g = g.sum()
            else:  # one scale per channel (the last dimension)
                g = g.reshape(-1, g.shape[-1]).sum(0).reshape(ctx.scale_shape)
            grad_s = g * ctx.grad_scale
        return grad_x, grad_s, None, None, None, None, None


def lsq_grad_scale(x_shape: torch.Size, scale: Tensor, T: int, layers: int) -> float:
    """LSQ's gradient scale ``g = 1 / sqrt(N Q_p)`` for a scale over values of ``x_shape``.

    ``Q_p = T (2**l - 1)``: the positive levels of the decoded grid ``s w_l / T`` (``T`` for rate
    coding). ``N``: the values one scale covers in one token (LSQ's "features of the layer" for
    activations): the channel count ``C`` for a per-tensor scale, 1 per channel. The loss is a mean
    over tokens, so the tokens of a batch are already averaged.
    """
    channels = x_shape[-1] if len(x_shape) else 1
    n = max(1, channels // max(1, scale.numel()))
    return 1.0 / math.sqrt(n * T * (2**layers - 1))


def mhse_learned_step(x: Tensor, scale: Tensor, T: int, layers: int, n_int: int = 1, init_half: bool = False,
                      grad_scale: float | None = None) -> Tensor:
    """The decoded value of ``x`` (bit for bit :func:`mhse_decode`), differentiable in ``x``
    (straight through inside the range) and in ``scale`` (LSQ; see :class:`_LearnedStep`).

    ``scale``: a float32 tensor, () or (C,) for ``x`` of shape (..., C). ``grad_scale`` None takes
    LSQ's :func:`lsq_grad_scale`; 1.0 gives the plain derivative. Base 2 only.
    """
    _check_exact(T, layers, 2.0)
    if not x.is_floating_point():
        raise TypeError(f"spike encoding takes a floating-point tensor, got {x.dtype}")
    if scale.dim() > 1 or (scale.dim() == 1 and (x.dim() == 0 or scale.shape[0] != x.shape[-1])):
        raise ValueError(f"scale of shape {tuple(scale.shape)} must be () or (C,) for values of shape {tuple(x.shape)}")
    g = lsq_grad_scale(x.shape, scale, T, layers) if grad_scale is None else float(grad_scale)
    return _LearnedStep.apply(x, scale, T, layers, n_int, init_half, g)
