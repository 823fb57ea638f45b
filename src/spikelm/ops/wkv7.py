"""WKV7: the time-mixing recurrence of RWKV-7 ("Goose", x070), as a naive loop, a single step and
a chunked form, all with one signature.

Per head, with a state ``S`` of shape (N, N) indexed [key dim i, value dim j], for t in order::

    S   = diag(w_t) S + b_t (a_t^T S) + k_t^T v_t     # decay, then a rank-1 "in-context" correction
    y_t = r_t @ S                                     # read AFTER the update (RWKV-6 reads before)

i.e. the transition is ``M_t = diag(w_t) + b_t a_t^T`` (diagonal plus rank one), a generalised
delta rule. The model passes ``a = -kk`` and ``b = kk * alpha`` (``kk`` the per-head unit-norm key,
``alpha`` in (0, 1)), so ``M_t = diag(w_t) - alpha kk kk^T``-like and the state stays bounded; the
ops themselves accept any a, b.

The official code (RWKV-LM, the ``rwkv`` pip package) stores the state transposed, [value, key]
(``state * w.view(H, 1, N) + state @ (a^T b) + v^T k``, ``y = state @ r``); spikelm keeps [key,
value] as for RWKV-6, so transpose when moving a state between the two.

``logw`` is the per-step log-decay (<= 0). The model computes it as ``-exp(-0.5) * sigmoid(z)``,
which is the official ``w = exp(-exp(-softplus(-z) - 0.5))`` without a log/exp round trip.

All forms compute in float32 (float64 when given float64, which the gradient checks use; the
chunked form needs no float64 for its stability); ``y`` comes back in r's dtype, the state in the
compute dtype. ``wkv7`` picks one: the single step for T == 1, the chunked form otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import Backend, compiled, grad_needed, resolve
from .wkv6 import LOG_DECAY_FLOOR
from .wkv_fla import mode_for as fla_mode_for
from .wkv_fla import usable as fla_usable
from .wkv_fla import wkv7_fla

__all__ = ["LOG_DECAY_FLOOR", "wkv7", "wkv7_chunked", "wkv7_naive", "wkv7_step"]

# Per-step log-decays are clamped to wkv6's floor in the chunked form: e^-60 ~ 9e-27 of the state
# survives instead of exactly 0, far below float32 resolution, so no result changes; it keeps -inf
# (and inf - inf) out of the cumulative sums and their gradients. The model's own decays never come
# near it (logw >= -exp(-0.5) ~ -0.61 per step).


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64 (gradient checks); everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_inputs(r: Tensor, k: Tensor, v: Tensor, logw: Tensor, a: Tensor, b: Tensor, state: Tensor | None) -> None:
    if r.dim() != 4:
        raise ValueError(f"r must be (B, T, H, N), got shape {tuple(r.shape)}")
    B, T, H, N = r.shape
    for name, x in (("k", k), ("v", v), ("logw", logw), ("a", a), ("b", b)):
        if x.shape != r.shape:
            raise ValueError(f"{name} must have the shape of r {tuple(r.shape)}, got {tuple(x.shape)}")
    if state is not None and state.shape != (B, H, N, N):
        raise ValueError(f"state must be (B, H, N, N) = {(B, H, N, N)}, got {tuple(state.shape)}")
    if T < 1:
        raise ValueError("wkv7 needs at least one time step (T >= 1)")


def _initial_state(state: Tensor | None, B: int, H: int, N: int, like: Tensor, dtype: torch.dtype) -> Tensor:
    if state is None:
        return torch.zeros(B, H, N, N, device=like.device, dtype=dtype)
    return state.to(dtype)


def wkv7_naive(
    r: Tensor, k: Tensor, v: Tensor, logw: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token RWKV-7 recurrence: the reference the other forms are tested against.

    Args:
        r, k, v, logw, a, b: (B, T, H, N); ``logw <= 0`` is the per-step log-decay of the key dim;
            ``a``, ``b`` are the two vectors of the rank-1 term ``b (a^T S)``.
        state: (B, H, N, N) [key, value] or None for zeros.

    Returns:
        y: (B, T, H, N) in r's dtype; the final state (B, H, N, N).
    """
    _check_inputs(r, k, v, logw, a, b, state)
    B, T, H, N = r.shape
    cdt = _compute_dtype(r)
    r_, k_, v_, a_, b_ = (x.to(cdt) for x in (r, k, v, a, b))
    w_ = torch.exp(logw.to(cdt))  # no differences of logs here: exp(-inf) = 0 is fine
    S = _initial_state(state, B, H, N, r, cdt)  # (B, H, N, N)
    ys = []
    for t in range(T):
        sa = torch.einsum("bhi,bhij->bhj", a_[:, t], S)  # a^T S, (B, H, N) over the value dim
        S = (
            w_[:, t].unsqueeze(-1) * S  # decay on the key dim
            + b_[:, t].unsqueeze(-1) * sa.unsqueeze(-2)  # b (a^T S)
            + k_[:, t].unsqueeze(-1) * v_[:, t].unsqueeze(-2)  # k^T v
        )
        ys.append(torch.einsum("bhi,bhij->bhj", r_[:, t], S))  # (B, H, N)
    y = torch.stack(ys, dim=1)  # (B, T, H, N)
    return y.to(r.dtype), S


def wkv7_step(
    r: Tensor, k: Tensor, v: Tensor, logw: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One token (T = 1) of :func:`wkv7_naive` as three batched matmuls, for recurrent decoding.

    ``S' = diag(w) S + [b | k] @ [a^T S ; v]`` (both rank-1 terms as one (N, 2) @ (2, N) product)
    and ``y = r @ S'``. Equal to the naive loop up to float rounding (tested).
    """
    _check_inputs(r, k, v, logw, a, b, state)
    B, T, H, N = r.shape
    if T != 1:
        raise ValueError(f"wkv7_step takes one time step, got T = {T}")
    cdt = _compute_dtype(r)
    r_, k_, v_, a_, b_ = (x.reshape(B * H, 1, N).to(cdt) for x in (r, k, v, a, b))
    S = _initial_state(state, B, H, N, r, cdt).reshape(B * H, N, N)
    w = torch.exp(logw.reshape(B * H, N, 1).to(cdt))
    sa = torch.bmm(a_, S)  # a^T S   (B*H, 1, N)
    left = torch.cat((b_, k_), dim=1).transpose(1, 2)  # (B*H, N, 2)
    right = torch.cat((sa, v_), dim=1)  # (B*H, 2, N)
    S = torch.baddbmm(w * S, left, right)  # diag(w) S + b (a^T S) + k^T v
    y = torch.bmm(r_, S)  # (B*H, 1, N)
    return y.view(B, 1, H, N).to(r.dtype), S.view(B, H, N, N)


def wkv7_chunked(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    logw: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None = None,
    chunk_size: int = 8,
) -> tuple[Tensor, Tensor]:
    """Chunk-parallel RWKV-7 recurrence: exact, every exponent <= 0, float32 throughout.

    Time is split into chunks of L = ``chunk_size`` (zero-padded at the end: a padded step has
    k = a = b = 0 and logw = 0, so it leaves the state untouched). Write u_t = a_t^T S_{t-1} (the
    state read out by a, a row of N values). Then the recurrence is a diagonal-decay linear
    recurrence driven by two rank-1 inputs, k_t^T v_t and b_t^T u_t, and within a chunk (steps
    t = 1..L, S_0 entering it, D(t, s) = sum_{s < i <= t} logw_i, all <= 0)::

        u_t = (a_t e^{D(t-1, 0)}) S_0 + sum_{s<t} [a_t . (e^{D(t-1, s)} k_s)] v_s
                                      + sum_{s<t} [a_t . (e^{D(t-1, s)} b_s)] u_s
        y_t = (r_t e^{D(t, 0)}) S_0   + sum_{s<=t} [r_t . (e^{D(t, s)} k_s)] v_s
                                      + sum_{s<=t} [r_t . (e^{D(t, s)} b_s)] u_s
        S_L = e^{D(L, 0)} S_0 + sum_s (k_s e^{D(L, s)})^T v_s + (b_s e^{D(L, s)})^T u_s

    The u equations are a unit lower-triangular system, (I - A_ab) U = W_0 S_0 + A_ak V, solved
    once per chunk with ``solve_triangular`` for both right-hand sides, so that inside the loop over
    chunks only U = W S_0 + U_v (and the two readouts) depend on the carried state.

    Numerical traps avoided:

    * No factorisation e^{D(t, s)} = e^{g_t} e^{-g_s}: e^{-g_s} overflows float32 once a chunk's
      decays sum below -88. Instead the pairwise exponents D(t, s) (an (L+1, L+1, N) table per
      chunk and head) are built by one cumulative sum over t of logw masked to i > s, so each
      D(t, s) is a short local sum (no difference of two large cumulative sums: a weak decay after
      a very strong one keeps its full relative precision without float64).
    * logw is clamped to LOG_DECAY_FLOOR, keeping -inf out of the sums and their gradients.
    * The triangular solve is well conditioned in the model's regime (|a|, |b| <= 1, w <= 1: its
      inverse holds products of contracting transitions); for arbitrary a, b the recurrence itself
      can grow, and the solve follows it as the loop does.

    Cost per token and head: O(L N) for the decay tables and the four interaction matrices, plus
    O(N^2 / L) for the state passing, balanced near L ~ sqrt(N); L = 8 was fastest on CPU for
    N = 64 (benchmarks/wkv_ops.py). Memory for autograd is O(T L N) per head, against O(T N^2) of states
    that the loop keeps. Gradients come from ordinary autograd. Args and returns as :func:`wkv7_naive`; ``chunk_size`` >= 1 need not
    divide T.
    """
    _check_inputs(r, k, v, logw, a, b, state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, T, H, N = r.shape
    cdt = _compute_dtype(r)
    L = chunk_size
    C = -(-T // L)  # number of chunks
    pad = C * L - T
    dev = r.device

    def to_chunks(x: Tensor) -> Tensor:
        x = x.to(cdt).transpose(1, 2)  # (B, H, T, N)
        if pad:
            x = F.pad(x, (0, 0, 0, pad))  # zeros: no input, decay 1 on padding
        return x.reshape(B, H, C, L, N)

    r_, k_, v_, a_, b_ = (to_chunks(x) for x in (r, k, v, a, b))  # (B, H, C, L, N)
    lw = to_chunks(logw.clamp(min=LOG_DECAY_FLOOR))  # (B, H, C, L, N)

    # --- pairwise log-decays D(p, q) = sum_{q < i <= p} logw_i, p, q in 0..L (0 = chunk start) ---
    steps = torch.arange(1, L + 1, device=dev)  # step index i of each row of lw
    starts = torch.arange(0, L + 1, device=dev)  # q
    after = (steps.view(L, 1) > starts.view(1, L + 1)).view(L, L + 1, 1)  # i > q
    masked = torch.where(after, lw.unsqueeze(-2), torch.zeros((), dtype=cdt, device=dev))  # (B, H, C, L, L+1, N)
    D = masked.cumsum(dim=-3)  # rows p = 1..L; exactly 0 where p <= q
    D = F.pad(D, (0, 0, 0, 0, 1, 0))  # row p = 0: all zeros   (B, H, C, L+1, L+1, N)

    incl = torch.ones(L, L, dtype=torch.bool, device=dev).tril().view(L, L, 1)  # s <= t
    strict = torch.ones(L, L, dtype=torch.bool, device=dev).tril(-1).view(L, L, 1)  # s < t
    zero = torch.zeros((), dtype=cdt, device=dev)
    # D(t, s) for the readout y_t (t, s = 1..L) and D(t-1, s) for u_t; masked after the exp
    # (D = 0 above the diagonal would give e^0 = 1 there).
    decay_y = torch.where(incl, torch.exp(D[..., 1:, 1:, :]), zero)  # (B, H, C, L, L, N)
    decay_u = torch.where(strict, torch.exp(D[..., :-1, 1:, :]), zero)  # (B, H, C, L, L, N)

    # --- intra-chunk interaction matrices (B, H, C, L, L) ---
    A_rk = torch.einsum("...tn,...tsn,...sn->...ts", r_, decay_y, k_)
    A_rb = torch.einsum("...tn,...tsn,...sn->...ts", r_, decay_y, b_)
    A_ak = torch.einsum("...tn,...tsn,...sn->...ts", a_, decay_u, k_)
    A_ab = torch.einsum("...tn,...tsn,...sn->...ts", a_, decay_u, b_)

    # --- state-independent parts of U: (I - A_ab) [W | U_v] = [a e^{D(t-1,0)} | A_ak V] ---
    a_from_start = a_ * torch.exp(D[..., :-1, 0, :])  # (B, H, C, L, N)
    eye = torch.eye(L, dtype=cdt, device=dev)
    rhs = torch.cat((a_from_start, A_ak @ v_), dim=-1)  # (B, H, C, L, 2N)
    sol = torch.linalg.solve_triangular(eye - A_ab, rhs, upper=False, unitriangular=True)
    W, U_v = sol[..., :N], sol[..., N:]  # (B, H, C, L, N) each

    r_from_start = r_ * torch.exp(D[..., 1:, 0, :])  # r_t e^{D(t, 0)}
    to_end = torch.exp(D[..., L, 1:, :])  # e^{D(L, s)}   (B, H, C, L, N)
    k_end, b_end = k_ * to_end, b_ * to_end
    chunk_decay = torch.exp(D[..., L, 0, :]).unsqueeze(-1)  # (B, H, C, N, 1)
    y_local = A_rk @ v_  # the part of y that needs no state   (B, H, C, L, N)

    # --- the sequential part: C steps of (L, N) @ (N, N) products ---
    S = _initial_state(state, B, H, N, r, cdt)  # (B, H, N, N)
    ys = []
    for c in range(C):
        U = W[:, :, c] @ S + U_v[:, :, c]  # u_t = a_t^T S_{t-1}   (B, H, L, N)
        ys.append(r_from_start[:, :, c] @ S + A_rb[:, :, c] @ U)
        S = chunk_decay[:, :, c] * S + k_end[:, :, c].transpose(-1, -2) @ v_[:, :, c] + b_end[:, :, c].transpose(-1, -2) @ U
    y = torch.stack(ys, dim=2) + y_local  # (B, H, C, L, N)
    y = y.reshape(B, H, C * L, N)[:, :, :T].transpose(1, 2)  # (B, T, H, N)
    return y.to(r.dtype), S


def wkv7(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    logw: Tensor,
    a: Tensor,
    b: Tensor,
    state: Tensor | None = None,
    impl: str = "auto",
    chunk_size: int = 8,
    backend: Backend = None,
) -> tuple[Tensor, Tensor]:
    """RWKV-7 WKV with a choice of implementation.

    ``impl="auto"``: the op ``wkv7`` of :mod:`.backend`. On CUDA, where flash-linear-attention is
    installed, its kernels (:mod:`.wkv_fla`): the chunked ones when a gradient is needed, the
    recurrent one otherwise. Otherwise :func:`wkv7_step` for T == 1 (decoding) and the chunked form
    (the reference fla is checked against) for longer inputs, under ``torch.compile`` with the
    ``compile`` backend. "naive", "chunked", "fla_chunk" and "fla_recurrent" force one.
    """
    if impl == "auto":
        how = resolve("wkv7", backend, r, cpp_ok=False, cuda_ok=fla_usable(r, k, v, logw, a, b, state))
        if how == "cuda":
            return wkv7_fla(r, k, v, logw, a, b, state, mode=fla_mode_for(grad_needed(r, k, v, logw, a, b, state)))
        if r.shape[1] == 1:
            return (compiled(wkv7_step) if how == "compile" else wkv7_step)(r, k, v, logw, a, b, state)
        return (compiled(wkv7_chunked) if how == "compile" else wkv7_chunked)(r, k, v, logw, a, b, state,
                                                                              chunk_size=chunk_size)
    if impl == "naive":
        return wkv7_naive(r, k, v, logw, a, b, state)
    if impl == "chunked":
        return wkv7_chunked(r, k, v, logw, a, b, state, chunk_size=chunk_size)
    if impl in ("fla_chunk", "fla_recurrent"):
        _check_inputs(r, k, v, logw, a, b, state)
        return wkv7_fla(r, k, v, logw, a, b, state, mode=impl[4:])
    raise ValueError(f"impl must be 'auto', 'naive', 'chunked', 'fla_chunk' or 'fla_recurrent', got {impl!r}")
