"""WKV4: the time-mixing recurrence of RWKV-4, used by SpikeGPT, as a naive loop and a parallel form.

Per channel, with a decay rate ``w <= 0`` (the model passes ``w = -exp(time_decay)``, so one step
multiplies the past by e^w) and a bonus ``u`` ("time_first") for the current token::

    y_t = (sum_{s<t} e^{(t-1-s) w + k_s} v_s + e^{u + k_t} v_t)
        / (sum_{s<t} e^{(t-1-s) w + k_s}     + e^{u + k_t})

The recurrent state is the numerically safe triple of the official kernels, each (B, C): the sums
are kept as ``aa * e^pp`` (numerator) and ``bb * e^pp`` (denominator), with ``pp`` a running
maximum exponent so that nothing is ever exponentiated above 0. An empty state is
``aa = bb = 0, pp = -1e38``.

Both implementations share one signature, compute in float32 (float64 when given float64; nothing
is promoted to float64), outside autocast, and
return ``y`` in the dtype of ``v`` and the state in the compute dtype. ``wkv4`` picks the loop for
single-token decoding and the parallel form otherwise, and on CUDA the fused Triton kernels of
:mod:`.wkv4_triton` (the loop's recurrence in one launch each way) where triton is installed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .wkv4_triton import usable as triton_usable
from .wkv4_triton import wkv4_triton
from ._precision import outside_autocast
from .backend import Backend, compiled, resolve

__all__ = ["WKV4State", "wkv4", "wkv4_naive", "wkv4_parallel", "wkv4_empty_state", "EMPTY_PP"]

WKV4State = tuple[Tensor, Tensor, Tensor]  # (aa, bb, pp), each (B, C)

# pp of an empty state: a finite "minus infinity" (as in the official code), so that pp + w and
# pp - max(...) stay finite in float32 and never produce inf - inf.
EMPTY_PP = -1e38

# The parallel form clamps w to this floor: a decay of e^-1e4 is zero in any float format, so
# the clamp changes nothing, and it turns w = -inf (time_decay overflowing exp) into a finite
# number (a masked -inf times a position would give NaN).
W_FLOOR = -1e4

# Chunk length of the parallel form: autograd keeps the (L, L) pairwise weights of every chunk,
# about L times the input; the state is carried across T / L chunks in a loop.
_CHUNK = 16


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


@outside_autocast
def wkv4_parallel(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKV4State | None = None
) -> tuple[Tensor, WKV4State]:
    """All time steps at once in chunks of _CHUNK tokens, in float32, overflow-free.

    Inside a chunk of length L entered with the state (aa, bb, pp), token t (0-based in the chunk)
    sees the state at exponent pp + t w and each earlier token s of the chunk at (t-1-s) w + k_s,
    itself at u + k_t. These exponents are formed *pairwise*, one (L, L) table per chunk and
    channel, then everything is taken relative to the row's maximum m_t, so no exp ever sees a
    positive argument::

        y_t = (e^{pp + t w - m} aa + sum_{s<t} e^{(t-1-s) w + k_s - m} v_s + e^{u + k_t - m} v_t)
            / (e^{pp + t w - m} bb + sum_{s<t} e^{(t-1-s) w + k_s - m}     + e^{u + k_t - m})

    Why pairwise and not a prefix sum: a prefix sum needs the position-dependent z_s = k_s - s w,
    whose magnitude grows with s (|s w| up to 1e4 s) and whose differences float32 cannot keep;
    the old log-space prefix sums ran in float64 (1/32-1/64 speed on most GPUs) and saved ~39x
    the input for backward. Each pairwise exponent is computed afresh from (t-1-s), w and k_s, so
    its error is relative to its own size, and terms whose size is large are negligible anyway.

    The chunk's own contribution to the state at its end, (A, B) at exponent P (its maximum),
    is batched over chunks; a loop over the T / L chunks then carries (aa, bb, pp) across them
    in the loop's own representation (pp the running maximum: max(pp + L w, P)). w is clamped
    to W_FLOOR. Autograd saves about L times the input (the pairwise weights).

    Args and returns as :func:`wkv4_naive`.
    """
    _check_inputs(w, u, k, v, state)
    B, T, C = k.shape
    cdt = _compute_dtype(v)
    w_ = w.to(cdt).clamp(min=W_FLOOR)
    u_, k_, v_ = u.to(cdt), k.to(cdt), v.to(cdt)
    aa, bb, pp = _initial_state(state, B, C, k, cdt)
    L = min(_CHUNK, T)
    n = -(-T // L)  # number of chunks
    pad = n * L - T
    dev = k.device
    kc = F.pad(k_, (0, 0, 0, pad)).view(B, n, L, C)  # padded tokens: masked out of every sum
    vc = F.pad(v_, (0, 0, 0, pad)).view(B, n, L, C)
    pos = torch.arange(L, device=dev)

    # --- each chunk's own contribution to the state at its end (the last chunk ends at T) ---
    length = torch.full((n,), L, device=dev)
    length[-1] = T - (n - 1) * L
    age = (length.view(n, 1) - 1 - pos.view(1, L)).to(cdt)  # steps from token s to the chunk's last  (n, L)
    real = (age >= 0).view(1, n, L, 1)
    e_end = torch.where(real, age.view(1, n, L, 1) * w_ + kc, -math.inf)  # (B, n, L, C)
    p_end = e_end.amax(dim=2)  # (B, n, C): the running maximum the loop would reach
    wt_end = torch.exp(e_end - p_end.unsqueeze(2))
    a_end = (wt_end * vc).sum(2)  # (B, n, C)
    b_end = wt_end.sum(2)

    # --- carry the state across chunks: the only sequential part ---
    decay = length.to(cdt).view(n, 1) * w_  # (n, C): L w, shorter for the last chunk
    entering = []
    for c in range(n):
        entering.append((aa, bb, pp))
        p = torch.maximum(pp + decay[c], p_end[:, c])
        e_old, e_new = torch.exp(pp + decay[c] - p), torch.exp(p_end[:, c] - p)
        aa, bb, pp = e_old * aa + e_new * a_end[:, c], e_old * bb + e_new * b_end[:, c], p
    aa0, bb0, pp0 = (torch.stack(x, dim=1).unsqueeze(2) for x in zip(*entering))  # (B, n, 1, C)

    # --- outputs: pairwise exponents X[t, s] of token s as seen from t, (B, n, t, s, C) ---
    dist = (pos.view(L, 1) - 1 - pos.view(1, L)).to(cdt)  # t - 1 - s
    before = (dist >= 0).view(L, L, 1)  # s < t
    diag = (dist == -1).view(L, L, 1)  # s = t
    k_s = kc.unsqueeze(2)  # (B, n, 1, s, C)
    X = torch.where(before, dist.view(L, L, 1) * w_ + k_s, torch.where(diag, u_ + k_s, -math.inf))
    hist = pp0 + pos.to(cdt).view(1, 1, L, 1) * w_  # the carried state seen from t   (B, n, L, C)
    # a reference only (detached before amax, which would otherwise keep X for backward); finite
    m = torch.maximum(hist.detach(), X.detach().amax(dim=3))
    wt = torch.exp(X - m.unsqueeze(3))  # (B, n, t, s, C), each <= 1
    e_hist = torch.exp(hist - m)
    num = e_hist * aa0 + (wt * vc.unsqueeze(2)).sum(3)
    den = e_hist * bb0 + wt.sum(3)  # >= 1 term equal to 1 at the maximum... or the state's
    y = (num / den).reshape(B, n * L, C)[:, :T]  # (B, T, C)
    return y.to(v.dtype), (aa, bb, pp)


def wkv4(
    w: Tensor, u: Tensor, k: Tensor, v: Tensor, state: WKV4State | None = None, impl: str = "auto",
    backend: Backend = None,
) -> tuple[Tensor, WKV4State]:
    """RWKV-4 WKV with a choice of implementation.

    ``impl="auto"``: the op ``wkv4`` of :mod:`.backend`. On CUDA, where triton is installed and
    the inputs are not float64, the fused Triton kernels (:func:`~.wkv4_triton.wkv4_triton`, any
    T, with a backward); otherwise the loop for T == 1 (token-by-token decoding) and the parallel
    form for longer inputs, under ``torch.compile`` with the ``compile`` backend. "naive",
    "parallel" and "triton" force one ("triton" on CPU tensors needs ``TRITON_INTERPRET=1``, see
    that module).
    """
    if impl == "auto":
        how = resolve("wkv4", backend, k, cpp_ok=False, cuda_ok=triton_usable(w, k))
        if how == "cuda":
            impl = "triton"
        else:
            form = wkv4_naive if k.shape[1] == 1 else wkv4_parallel
            return (compiled(form) if how == "compile" else form)(w, u, k, v, state)
    if impl == "naive":
        return wkv4_naive(w, u, k, v, state)
    if impl == "parallel":
        return wkv4_parallel(w, u, k, v, state)
    if impl == "triton":
        _check_inputs(w, u, k, v, state)
        return outside_autocast(wkv4_triton)(w, u, k, v, state)
    raise ValueError(f"impl must be 'auto', 'naive', 'parallel' or 'triton', got {impl!r}")
