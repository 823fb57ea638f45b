"""WKV4: the time-mixing recurrence of RWKV-4, used by SpikeGPT, as a naive loop and a parallel form.

Per channel, with a decay rate ``w <= 0`` (the model passes ``w = -exp(time_decay)``, so one step
multiplies the past by e^w) and a bonus ``u`` ("time_first") for the current token::

    y_t = (sum_{s<t} e^{(t-1-s) w + k_s} v_s + e^{u + k_t} v_t)
        / (sum_{s<t} e^{(t-1-s) w + k_s}     + e^{u + k_t})

The recurrent state is the numerically safe triple of the official kernels, each (B, C): the sums
are kept as ``aa * e^pp`` (numerator) and ``bb * e^pp`` (denominator), with ``pp`` a running
maximum exponent so that nothing is ever exponentiated above 0. An empty state is
``aa = bb = 0, pp = -1e38``.

Both implementations share one signature, compute in float32 (float64 when given float64) and
return ``y`` in the dtype of ``v`` and the state in the compute dtype. ``wkv4`` picks the loop for
single-token decoding and the parallel form otherwise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._precision import outside_autocast

__all__ = ["WKV4State", "wkv4", "wkv4_naive", "wkv4_parallel", "wkv4_empty_state", "EMPTY_PP"]

WKV4State = tuple[Tensor, Tensor, Tensor]  # (aa, bb, pp), each (B, C)

# pp of an empty state: a finite "minus infinity" (as in the official code), so that pp + w and
# pp - max(...) stay finite in float32 and never produce inf - inf.
EMPTY_PP = -1e38

# The parallel form clamps w to this floor. It works with exponents like s * w, which float64
# keeps exact to ~1e-10 while |w| * T stays below ~3e6 (with T <= _SEGMENT below). A decay of
# e^-1e4 is zero in any float format, so the clamp changes nothing unless keys differ by more
# than ~1e4 - 745, and it turns w = -inf (time_decay overflowing exp) into a finite number.
W_FLOOR = -1e4

# Sequences are processed in segments of this many steps, carrying the state between segments,
# which bounds the position-dependent shift |s * w| <= 2.6e6 whatever T is (see W_FLOOR); 256 steps
# of (B, C) float64 also stay closer to the CPU caches than one long segment.
_SEGMENT = 256

# Block length of the blocked log-prefix-sum (see _log_prefix_sums).
_BLOCK = 16
# A block's local sums are trusted while they stay >= this (normal float64, with ~1e-18 relative
# room below it for the terms that underflowed); otherwise the exact scan takes over.
_TINY = 1e-290


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64 (gradient checks); everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def wkv4_empty_state(batch: int, channels: int, device: torch.device | str | None = None) -> WKV4State:
    """The state before any token: aa = bb = 0 and pp = EMPTY_PP, each (batch, channels) float32."""
    aa = torch.zeros(batch, channels, device=device)
    return aa, torch.zeros_like(aa), torch.full_like(aa, EMPTY_PP)


def _check_inputs(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKV4State | None) -> None:
    if k.dim() != 3:
        raise ValueError(f"k must be (B, T, C), got shape {tuple(k.shape)}")
    B, T, C = k.shape
    if v.shape != k.shape:
        raise ValueError(f"v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    for name, x in (("w", w), ("u", u)):
        if x.shape != (C,):
            raise ValueError(f"{name} must be (C,) = ({C},), got {tuple(x.shape)}")
    if state is not None:
        if len(state) != 3 or any(s.shape != (B, C) for s in state):
            raise ValueError(f"state must be a triple (aa, bb, pp) of (B, C) = {(B, C)} tensors")
    if T < 1:
        raise ValueError("wkv4 needs at least one time step (T >= 1)")


def _initial_state(state: WKV4State | None, B: int, C: int, like: Tensor, dtype: torch.dtype) -> WKV4State:
    if state is None:
        aa, bb, pp = wkv4_empty_state(B, C, like.device)
    else:
        aa, bb, pp = state
    return aa.to(dtype), bb.to(dtype), pp.to(dtype)


@outside_autocast
def wkv4_naive(w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKV4State | None = None) -> tuple[Tensor, WKV4State]:
    """Token-by-token RWKV-4 recurrence, step for step as in the official CUDA kernel.

    Args:
        w: (C,) decay rate, <= 0 (per-step factor e^w); u: (C,) bonus of the current token.
        k, v: (B, T, C).
        state: (aa, bb, pp), each (B, C), or None for the empty state.

    Returns:
        y: (B, T, C) in v's dtype; the state after the last token.
    """
    _check_inputs(w, u, k, v, state)
    B, T, C = k.shape
    cdt = _compute_dtype(v)
    w_, u_, k_, v_ = w.to(cdt), u.to(cdt), k.to(cdt), v.to(cdt)
    aa, bb, pp = _initial_state(state, B, C, k, cdt)  # (B, C) each
    ys = []
    for t in range(T):
        kt, vt = k_[:, t], v_[:, t]  # (B, C)
        # output: history (aa, bb at scale e^pp) plus the current token with bonus, both rescaled
        # by the larger exponent so that the exps are <= 1
        cur = u_ + kt
        p = torch.maximum(pp, cur)
        e_hist, e_cur = torch.exp(pp - p), torch.exp(cur - p)
        ys.append((e_hist * aa + e_cur * vt) / (e_hist * bb + e_cur))
        # state: decay the history by e^w, add the current token without bonus
        decayed = w_ + pp
        p = torch.maximum(decayed, kt)
        e_hist, e_cur = torch.exp(decayed - p), torch.exp(kt - p)
        aa, bb, pp = e_hist * aa + e_cur * vt, e_hist * bb + e_cur, p
    y = torch.stack(ys, dim=1)  # (B, T, C)
    return y.to(v.dtype), (aa, bb, pp)


def _log_prefix_sums(x: Tensor, init: Tensor) -> tuple[Tensor, Tensor]:
    """Exclusive log-prefix-sums of float64 x (B, T, C) after a starting term init (B, C).

    Returns ``before[:, t] = log(e^init + sum_{s<t} e^{x_s})`` (B, T, C) and the total over all
    of x (B, C). torch.logcumsumexp is a scalar scan with an exp and a log per element, slow on
    CPU; here each block of _BLOCK steps is summed with one vectorised exp and a cumsum relative
    to the block's maximum m (so every exp is <= 1): local_t = sum_{s <= t in block} e^{x_s - m}.
    A short logcumsumexp over the block totals carries init and the earlier blocks in, relative to
    a per-block reference, so the only per-element transcendental functions are one exp and one
    log. init may be a "minus infinity" such as -1e38: it never enters a local sum.

    This is exact as long as no local sum is so small that terms could have underflowed, i.e.
    the first element of every block is within ~667 of the block maximum; otherwise (keys or
    decays spanning e^667 within 16 steps) the exact torch scan is used instead.
    """
    B, T, C = x.shape
    n = -(-T // _BLOCK)
    xb = F.pad(x, (0, 0, 0, n * _BLOCK - T), value=-math.inf).view(B, n, _BLOCK, C)
    m = xb.amax(dim=2, keepdim=True).detach()  # a reference only: the result does not depend on it
    if bool((xb[:, :, :1] - m < math.log(_TINY)).any()):  # local sums are smallest at a block's start
        # init is added afterwards: torch.logcumsumexp's backward loses the gradient of a -1e38
        # entry (it adds and subtracts 1e38), logaddexp's does not.
        inclusive = torch.logcumsumexp(x, dim=1)  # (B, T, C)
        exclusive = F.pad(inclusive[:, :-1], (0, 0, 1, 0), value=-math.inf)
        return torch.logaddexp(init.unsqueeze(1), exclusive), torch.logaddexp(init, inclusive[:, -1])
    local = torch.cumsum(torch.exp(xb - m), dim=2)  # in [_TINY, _BLOCK]   (B, n, L, C)
    block_total = m.squeeze(2) + torch.log(local[:, :, -1])  # (B, n, C)
    carry = torch.logcumsumexp(torch.cat([init.unsqueeze(1), block_total], dim=1), dim=1)  # (B, n+1, C)
    carry_in = carry[:, :n].unsqueeze(2)  # init and the blocks before this one   (B, n, 1, C)
    ref = torch.maximum(carry_in, m).detach()  # (B, n, 1, C), a reference again
    inclusive = ref + torch.log(torch.exp(carry_in - ref) + torch.exp(m - ref) * local)  # (B, n, L, C)
    inclusive = inclusive.view(B, n * _BLOCK, C)[:, : T - 1]
    return torch.cat([init.unsqueeze(1), inclusive], dim=1), carry[:, n]


def _parallel_segment(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor
) -> tuple[Tensor, WKV4State]:
    """One segment of :func:`wkv4_parallel`; all tensors float64. k, v: (B, T, C); the rest (B, C) or (C,)."""
    B, T, C = k.shape
    pos = torch.arange(T, dtype=k.dtype, device=k.device).unsqueeze(-1)  # (T, 1)
    # The weight of token s at time t > s is e^{(t-1-s) w + k_s} = e^{(t-1) w} e^{z_s} with
    # z_s = k_s - s w: a prefix sum over s with a common factor per t. The carried state is a
    # token at s = -1: its sums aa e^pp, bb e^pp are scaled by e^{t w} = e^{(t-1) w} e^{pp + w}.
    z = k - pos * w  # (B, T, C)
    z0 = pp + w  # (B, C)

    # The numerator has signed values, but a log-space sum needs positive ones: shift v by a
    # constant c > max |v| (detached; any such c gives the same result) and subtract c times the
    # denominator again. In float64 this costs nothing measurable at float32 output precision.
    # The carried state's numerator value becomes aa + c bb.
    c = 2.0 * torch.maximum(v.abs().amax(dim=1), aa.abs() / bb.clamp(min=1e-300)) + 1e-30  # (B, C)
    c = c.detach()
    v_c = v + c.unsqueeze(1)  # > 0   (B, T, C)
    log_v = torch.log(v_c)
    # bb is 0 only in the empty state, where pp = -1e38 makes the term vanish anyway; the clamp
    # keeps log() finite there (and its gradient free of inf * 0).
    den0 = z0 + torch.log(bb.clamp(min=1e-300))  # (B, C)
    num0 = z0 + torch.log((aa + c * bb).clamp(min=1e-300))  # aa + c bb >= |aa| + 1e-30 bb
    # Prefix sums over the state and the tokens s < t, and totals for the state after the segment
    den_c, den_all = _log_prefix_sums(z, den0)  # (B, T, C), (B, C)
    num_c, num_all = _log_prefix_sums(z + log_v, num0)

    # y_t = (history + current) / (history + current) - c, all rescaled by a common e^-m.
    shift = (pos - 1.0) * w  # (t-1) w   (T, C)
    hist_den = den_c + shift  # log of the history's denominator at t
    cur = u + k  # log weight of the current token   (B, T, C)
    m = torch.maximum(hist_den, cur)
    e_hist, e_cur = torch.exp(hist_den - m), torch.exp(cur - m)
    e_num = torch.exp(num_c + shift - m)  # history's numerator: bounded by e_hist * max(v + c)
    y = (e_num + e_cur * v_c) / (e_hist + e_cur) - c.unsqueeze(1)  # (B, T, C)

    # State after the segment, in the loop's own representation: its pp is the running maximum
    # max(pp_prev + w, k_t), which unrolls to (T-1) w + max(z0, max_s z_s).
    z_max = torch.maximum(z0, z.amax(dim=1))  # (B, C)
    bb_new = torch.exp(den_all - z_max)
    aa_new = torch.exp(num_all - z_max) - c * bb_new
    pp_new = (T - 1) * w + z_max
    return y, (aa_new, bb_new, pp_new)


@outside_autocast
def wkv4_parallel(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKV4State | None = None
) -> tuple[Tensor, WKV4State]:
    """All time steps at once, exact and overflow-free: prefix sums in log space.

    With z_s = k_s - s w, the history sum at time t is e^{(t-1) w} sum_{s<t} e^{z_s} (v_s or 1),
    a prefix sum, so its logarithm is a logcumsumexp of z (+ log v), computed blockwise by
    :func:`_log_prefix_sums`. Signed v is made positive by a constant shift that is subtracted
    again at the end (see the segment code). Everything runs in float64: z grows linearly with s
    (|s w| up to 2.6e6 with the W_FLOOR clamp and 256-step segments, which carry the state from
    one to the next), and float64 keeps the differences of such numbers exact to ~1e-10; the
    result is rounded to the compute dtype at the end. The outputs and the carried state match
    :func:`wkv4_naive` (the state in the same (aa, bb, pp) representation, not just the same value).

    Args and returns as :func:`wkv4_naive`.
    """
    _check_inputs(w, u, k, v, state)
    B, T, C = k.shape
    cdt = _compute_dtype(v)
    f64 = torch.float64
    w_ = w.to(f64).clamp(min=W_FLOOR)
    u_, k_, v_ = u.to(f64), k.to(f64), v.to(f64)
    aa, bb, pp = _initial_state(state, B, C, k, f64)
    ys = []
    for t0 in range(0, T, _SEGMENT):
        seg = slice(t0, t0 + _SEGMENT)
        y, (aa, bb, pp) = _parallel_segment(w_, u_, k_[:, seg], v_[:, seg], aa, bb, pp)
        ys.append(y)
    y = torch.cat(ys, dim=1)  # (B, T, C)
    return y.to(v.dtype), (aa.to(cdt), bb.to(cdt), pp.to(cdt))


def wkv4(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKV4State | None = None, impl: str = "auto"
) -> tuple[Tensor, WKV4State]:
    """RWKV-4 WKV with a choice of implementation.

    ``impl="auto"`` uses the loop for T == 1 (token-by-token decoding) and the parallel form
    otherwise; "naive" and "parallel" force one.
    """
    if impl == "auto":
        impl = "naive" if k.shape[1] == 1 else "parallel"
    if impl == "naive":
        return wkv4_naive(w, u, k, v, state)
    if impl == "parallel":
        return wkv4_parallel(w, u, k, v, state)
    raise ValueError(f"impl must be 'auto', 'naive' or 'parallel', got {impl!r}")
