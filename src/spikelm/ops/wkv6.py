"""WKV6: the time-mixing recurrence of RWKV-6 ("Finch"), as a naive loop and a chunked form.

Per head, with a state ``S`` of shape (N, N) indexed [key dim i, value dim j], for t in order::

    a_t = k_t^T v_t                          # outer product, (N, N)
    y_t = r_t @ (diag(u) a_t + S)            # y_t[j] = sum_i r_t[i] (u[i] k_t[i] v_t[j] + S[i, j])
    S   = diag(w_t) S + a_t                  # data-dependent decay on the key dim, w_t = exp(logw_t)

``logw`` is passed in log space (the model computes ``logw = -exp(time_decay + lora)``), so the
decay ``w = exp(logw)`` matches the official ``w = exp(-exp(decay))`` without a lossy
``log(exp(...))`` round trip, and so the chunked form can add decays as sums of logs.

Both implementations share one signature and compute in float32 (float64 when given float64, which
the gradient checks use; nothing is promoted to float64), outside autocast; ``y`` comes back in the dtype of ``r``, the state in the compute dtype.
``wkv6`` picks one: the loop for single-token decoding, the chunked form for everything else.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .wkv_fla import mode_for as fla_mode_for
from .wkv_fla import usable as fla_usable
from .wkv_fla import wkv6_fla
from ._precision import outside_autocast
from .backend import Backend, compiled, grad_needed, resolve
from .kernels import op as cpp_op

__all__ = ["wkv6", "wkv6_naive", "wkv6_step", "wkv6_chunked", "wkv6_chunked_fp32", "wkv6_recurrent_cpu", "LOG_DECAY_FLOOR"]

# Per-step log-decays are clamped to this floor in the chunked form. A step then keeps e^-60 ~ 9e-27
# of the state instead of (say) e^-1e4 = 0: both are far below float32 resolution relative to 1
# (eps ~ 1.2e-7), so no result changes in practice. The floor keeps every cumulative sum finite
# (with logw = -inf a masked-out e^{-inf} times 0 would be NaN in the gradient).
LOG_DECAY_FLOOR = -60.0


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 stays float64 (gradient checks); everything else is computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _check_inputs(r: Tensor, k: Tensor, v: Tensor, logw: Tensor, u: Tensor, state: Tensor | None) -> None:
    if r.dim() != 4:
        raise ValueError(f"r must be (B, T, H, N), got shape {tuple(r.shape)}")
    B, T, H, N = r.shape
    for name, x in (("k", k), ("v", v), ("logw", logw)):
        if x.shape != r.shape:
            raise ValueError(f"{name} must have the shape of r {tuple(r.shape)}, got {tuple(x.shape)}")
    if u.shape != (H, N):
        raise ValueError(f"u must be (H, N) = {(H, N)}, got {tuple(u.shape)}")
    if state is not None and state.shape != (B, H, N, N):
        raise ValueError(f"state must be (B, H, N, N) = {(B, H, N, N)}, got {tuple(state.shape)}")
    if T < 1:
        raise ValueError("wkv6 needs at least one time step (T >= 1)")


def _initial_state(state: Tensor | None, B: int, H: int, N: int, like: Tensor, dtype: torch.dtype) -> Tensor:
    if state is None:
        return torch.zeros(B, H, N, N, device=like.device, dtype=dtype)
    return state.to(dtype)


@outside_autocast
def wkv6_naive(
    r: Tensor, k: Tensor, v: Tensor, logw: Tensor, u: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Token-by-token RWKV-6 recurrence: the reference the chunked form is tested against.

    Args:
        r, k, v, logw: (B, T, H, N); ``logw <= 0`` is the per-step log-decay of the key dim.
        u: (H, N) bonus ("time_faaaa") applied to the current token only.
        state: (B, H, N, N) [key, value] or None for zeros.

    Returns:
        y: (B, T, H, N) in r's dtype; the final state (B, H, N, N).
    """
    _check_inputs(r, k, v, logw, u, state)
    B, T, H, N = r.shape
    cdt = _compute_dtype(r)
    r_, k_, v_ = r.to(cdt), k.to(cdt), v.to(cdt)
    w_ = torch.exp(logw.to(cdt))  # exp(-inf) = 0 is fine here: no differences of logs are taken
    u_ = u.to(cdt).unsqueeze(-1)  # (H, N, 1)
    S = _initial_state(state, B, H, N, r, cdt)  # (B, H, N, N)
    ys = []
    for t in range(T):
        a = k_[:, t].unsqueeze(-1) * v_[:, t].unsqueeze(-2)  # (B, H, N, N)
        ys.append(torch.einsum("bhi,bhij->bhj", r_[:, t], u_ * a + S))  # (B, H, N)
        S = w_[:, t].unsqueeze(-1) * S + a
    y = torch.stack(ys, dim=1)  # (B, T, H, N)
    return y.to(r.dtype), S


@outside_autocast
def wkv6_step(
    r: Tensor, k: Tensor, v: Tensor, logw: Tensor, u: Tensor, state: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One token (T = 1) of :func:`wkv6_naive` in fewer operations, for recurrent decoding.

    Same recurrence, regrouped: ``y = r @ S + (r . (u * k)) v`` (the bonus term without forming
    ``diag(u) k^T v``) and ``S' = diag(w) S + k^T v`` as one batched rank-1 update. Equal to the
    naive loop up to float rounding (tested); shapes as :func:`wkv6_naive` with T = 1.
    """
    _check_inputs(r, k, v, logw, u, state)
    B, T, H, N = r.shape
    if T != 1:
        raise ValueError(f"wkv6_step takes one time step, got T = {T}")
    cdt = _compute_dtype(r)
    r_, k_, v_ = (t.reshape(B, H, N).to(cdt) for t in (r, k, v))
    S = _initial_state(state, B, H, N, r, cdt).reshape(B * H, N, N)
    bonus = (r_ * u.to(cdt) * k_).sum(-1, keepdim=True)  # r . (u * k) per head, (B, H, 1)
    y = torch.baddbmm((bonus * v_).reshape(B * H, 1, N), r_.reshape(B * H, 1, N), S)  # (B*H, 1, N)
    w = torch.exp(logw.reshape(B * H, N, 1).to(cdt))
    S = torch.baddbmm(w * S, k_.reshape(B * H, N, 1), v_.reshape(B * H, 1, N))  # diag(w) S + k^T v
    return y.view(B, 1, H, N).to(r.dtype), S.view(B, H, N, N)


# Sub-chunk length. Tokens of one sub-chunk meet pairwise: their decays are formed as an (l, l, N)
# tensor per sub-chunk (l times the size of r), recomputed in the backward pass instead of saved.
# Between sub-chunks everything is a matmul. 8 balances the two.
_MAX_SUB_CHUNK = 8


def _sub_chunk_size(chunk_size: int) -> int:
    """Largest divisor of ``chunk_size`` that is <= _MAX_SUB_CHUNK."""
    return max(d for d in range(1, min(_MAX_SUB_CHUNK, chunk_size) + 1) if chunk_size % d == 0)


class _Chunks:
    """The chunk layout: T split into C chunks of L tokens (zero-padded at the end: r = k = v = 0
    and logw = 0, a decay of 1, so padding leaves the state untouched), each cut into ``n_sub``
    sub-chunks of ``l`` tokens."""

    def __init__(self, r: Tensor, k: Tensor, v: Tensor, logw: Tensor, u: Tensor, state: Tensor | None,
                 chunk_size: int) -> None:
        _check_inputs(r, k, v, logw, u, state)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.B, self.T, self.H, self.N = r.shape
        self.cdt = _compute_dtype(r)
        self.L = chunk_size
        self.l = _sub_chunk_size(chunk_size)
        self.n_sub = self.L // self.l
        self.C = -(-self.T // self.L)  # number of chunks
        self.pad = self.C * self.L - self.T
        self.shape = (self.B, self.H, self.C, self.L, self.N)
        self.sub = (self.B, self.H, self.C, self.n_sub, self.l, self.N)

    def split(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """(B, T, H, N) -> (B, H, C, L, N) in ``dtype``, zero-padded."""
        x = x.to(dtype).transpose(1, 2)  # (B, H, T, N)
        if self.pad:
            x = F.pad(x, (0, 0, 0, self.pad))
        return x.reshape(self.shape)


def _shift(x: Tensor, dim: int, by: int) -> Tensor:
    """x moved ``by`` = +1 (later) or -1 (earlier) positions along ``dim``, zero-filled."""
    n = x.shape[dim]
    zero = torch.zeros_like(x.narrow(dim, 0, 1))
    if by > 0:
        return torch.cat([zero, x.narrow(dim, 0, n - 1)], dim)
    return torch.cat([x.narrow(dim, 1, n - 1), zero], dim)


def _exclusive_cumsum(x: Tensor, dim: int) -> Tensor:
    """sum_{j<t} x_j, as a sum of exactly those terms (no inclusive-minus-own-term cancellation)."""
    return _shift(x, dim, +1).cumsum(dim)


def _exclusive_suffix_sum(x: Tensor, dim: int) -> Tensor:
    """sum_{j>t} x_j, again summing only those terms."""
    return _shift(x, dim, -1).flip(dim).cumsum(dim).flip(dim)


def _pair_sums(x: Tensor) -> Tensor:
    """X[..., t, s, n] = sum_{s<j<t} x[..., j, n] for s < t (0 for s >= t); x is (..., l, n).

    Each entry is a sum of exactly the terms between s and t, not a difference of two cumulative
    sums: after a run of strong decays (cumulative -480) a later weak decay (-1e-3) keeps its full
    float32 precision, where b_t - b_s would have lost it to the ulp of 480 (3e-5).
    """
    l = x.shape[-2]
    idx = torch.arange(l, device=x.device)
    keep = (idx.view(1, -1) >= idx.view(-1, 1) + 2).to(x.dtype)  # [s, t']: t' >= s + 2
    # x_prev[t'] = x[t' - 1]; X[t, s] = sum_{s+2 <= t' <= t} x_prev[t'] = sum_{s<j<t} x_j
    cum = (_shift(x, -2, +1).unsqueeze(-3) * keep.unsqueeze(-1)).cumsum(-2)  # (..., s, t, n)
    return cum.transpose(-2, -3)  # (..., t, s, n)


def _pair_decays(lw: Tensor) -> Tensor:
    """e^{sum_{s<j<t} lw_j} for s < t and 0 for s >= t: (..., l, l, N), every exponent <= 0."""
    l = lw.shape[-2]
    causal = torch.ones(l, l, dtype=torch.bool, device=lw.device).tril(-1).unsqueeze(-1)  # [t, s]: s < t
    return torch.exp(_pair_sums(lw)) * causal


class _IntraSubChunk(torch.autograd.Function):
    """Scores of the token pairs s < t inside one sub-chunk:
    ``A[t, s] = sum_i r_t[i] k_s[i] e^{sum_{s<j<t} lw_j[i]}``, (..., l, l) from (..., l, N) inputs.

    The pairwise decay tensor is l times the size of r; autograd would keep it (and products of
    it) for backward. Here backward recomputes it from r, k and lw, which are all it saves. With
    ``G = dA[t, s] e^{...}``: ``dr_t = sum_s G k_s``, ``dk_s = sum_t G r_t``, and lw_j collects
    ``P[t, s] = G r_t k_s`` over the pairs s < j < t: a cumulative sum over s, a reverse one
    over t, and the entries (t, s) = (j + 1, j - 1) of the result (plain sums, no cancellation).
    """

    @staticmethod
    def forward(ctx, r: Tensor, k: Tensor, lw: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(r, k, lw)
        return torch.einsum("...tn,...sn,...tsn->...ts", r, k, _pair_decays(lw))

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        r, k, lw = ctx.saved_tensors
        G = g.unsqueeze(-1) * _pair_decays(lw)  # (..., t, s, N)
        dr = torch.einsum("...tsn,...sn->...tn", G, k)
        dk = torch.einsum("...tsn,...tn->...sn", G, r)
        P = G * r.unsqueeze(-2) * k.unsqueeze(-3)  # (..., t, s, N)
        R = P.cumsum(-2).flip(-3).cumsum(-3).flip(-3)  # R[t, s] = sum_{t' >= t, s' <= s} P[t', s']
        inner = torch.diagonal(R, offset=-2, dim1=-3, dim2=-2).movedim(-1, -2)  # R[j + 1, j - 1], (..., l - 2, N)
        dlw = F.pad(inner, (0, 0, 1, 1))  # j = 0 and j = l - 1 lie strictly between no pair
        return dr, dk, dlw


class _Factors(NamedTuple):
    """What the chunked skeleton needs from the log-decays, every factor <= 1 (times r or k).
    With b the cumulative log-decay inside a chunk, sub-chunk a spanning ref_a (b just before its
    first token) to E_a (b at its last), and b_L the chunk's total:"""

    q: Tensor  # r_t e^{b_{t-1} - ref_a}   (B, H, C, n_sub, l, N)
    k_end: Tensor  # k_s e^{E_a - b_s}   (B, H, C, n_sub, l, N)
    to_chunk_end: Tensor  # e^{b_L - E_a}   (B, H, C, n_sub, 1, N)
    from_chunk_start: Tensor  # e^{ref_a}   (B, H, C, n_sub, 1, N)
    chunk_decay: Tensor  # e^{b_L}   (B, H, C, N)
    between: Tensor  # e^{ref_a - E_a'} for a' < a (anything, masked, for a' >= a)   (B, H, C, a, a', 1, N)
    same: Tensor  # scores of the pairs s < t of one sub-chunk   (B, H, C, n_sub, l, l)


def _factors_pair_sums(r: Tensor, k: Tensor, lw: Tensor) -> _Factors:
    """The factors in the compute dtype, each exponent a sum of exactly the log-decays it spans
    (exclusive prefix and suffix sums, pair sums), never a difference of two cumulative sums; the
    same-sub-chunk pairs through :class:`_IntraSubChunk`. lw: (B, H, C, n_sub, l, N)."""
    sub_total = lw.sum(-2)  # E_a - ref_a   (B, H, C, n_sub, N)
    return _Factors(
        q=r * torch.exp(_exclusive_cumsum(lw, -2)),
        k_end=k * torch.exp(_exclusive_suffix_sum(lw, -2)),
        to_chunk_end=torch.exp(_exclusive_suffix_sum(sub_total, -2)).unsqueeze(-2),
        from_chunk_start=torch.exp(_exclusive_cumsum(sub_total, -2)).unsqueeze(-2),
        chunk_decay=torch.exp(sub_total.sum(-2)),
        between=torch.exp(_pair_sums(sub_total)).unsqueeze(-2),
        same=_IntraSubChunk.apply(r, k, lw),
    )


def _factors_float64(r: Tensor, k: Tensor, lw: Tensor) -> _Factors:
    """The factors from float64 cumulative sums, taken locally (per sub-chunk, then across
    sub-chunks), so a weak decay after a very strong one keeps full relative precision. Inside a
    sub-chunk |c| <= 60 l <= 480 thanks to the log-decay floor, so the plain factorisation
    (r_t e^{c_{t-1}}) . (k_s e^{-c_s}) is safe in float64 (range e^+-709): one small float64
    matmul per sub-chunk, rounded to the compute dtype afterwards. lw: float64."""
    cdt = r.dtype
    c_in = lw.cumsum(dim=-2)  # b_s - ref_a, inclusive
    sub_total = c_in[..., -1:, :]  # (B, H, C, n_sub, 1, N)
    end = sub_total.cumsum(dim=3)  # E_a
    ref = end - sub_total  # ref_a
    chunk_total = end[:, :, :, -1:]  # b_L   (B, H, C, 1, 1, N)
    q64 = r.to(torch.float64) * torch.exp(c_in - lw)  # r_t e^{c_{t-1}}
    # k_s e^{-c_s}, up to e^480: fine in float64. A product, not k / e^{c_s}: autograd's quotient
    # rule divides by (e^{c_s})^2, which underflows to 0 for c_s < -354 and made the gradient of
    # the log-decays inf - inf = NaN (decays at the floor for 6+ tokens of a sub-chunk).
    k64 = k.to(torch.float64) * torch.exp(-c_in)
    causal = torch.ones(lw.shape[-2], lw.shape[-2], dtype=torch.bool, device=lw.device).tril(-1)

    def exp_(x: Tensor) -> Tensor:  # a float64 exponent (<= 0), evaluated in the compute dtype
        return torch.exp(x.to(cdt))

    return _Factors(
        q=q64.to(cdt),
        k_end=(k64 * torch.exp(sub_total)).to(cdt),
        to_chunk_end=exp_(chunk_total - end),
        from_chunk_start=exp_(ref),
        chunk_decay=exp_(chunk_total).flatten(3),
        between=exp_((ref.unsqueeze(4) - end.unsqueeze(3)).clamp(max=0.0)),  # a' >= a: clamped, masked later
        same=((q64 @ k64.transpose(-1, -2)) * causal).to(cdt),
    )


def _chunked(r: Tensor, k: Tensor, v: Tensor, logw: Tensor, u: Tensor, state: Tensor | None, chunk_size: int,
             factors: Callable[[Tensor, Tensor, Tensor], _Factors]) -> tuple[Tensor, Tensor]:
    """The chunk-parallel recurrence (see :func:`wkv6_chunked`), its decay factors from
    ``factors``: :func:`_factors_float64` (log-decays summed in float64) or
    :func:`_factors_pair_sums` (in the compute dtype)."""
    ch = _Chunks(r, k, v, logw, u, state, chunk_size)
    B, T, H, N, cdt, L, l, n_sub, C = ch.B, ch.T, ch.H, ch.N, ch.cdt, ch.L, ch.l, ch.n_sub, ch.C
    dev = r.device
    r_, k_, v_ = ch.split(r, cdt), ch.split(k, cdt), ch.split(v, cdt)  # (B, H, C, L, N)
    sums = torch.float64 if factors is _factors_float64 else cdt
    lw = ch.split(logw.clamp(min=LOG_DECAY_FLOOR), sums).reshape(ch.sub)  # (B, H, C, n_sub, l, N)
    f = factors(r_.reshape(ch.sub), k_.reshape(ch.sub), lw)

    # --- state passing between chunks: the only sequential part, C steps ---
    k_chunk_end = (f.k_end * f.to_chunk_end).reshape(ch.shape)  # k_s e^{b_L - b_s}
    state_inc = k_chunk_end.transpose(-1, -2) @ v_  # what each chunk adds   (B, H, C, N, N)
    chunk_decay = f.chunk_decay.unsqueeze(-1)  # (B, H, C, N, 1)
    q_state = (f.q * f.from_chunk_start).reshape(ch.shape)  # r_t e^{b_{t-1}}   (B, H, C, L, N)
    S = _initial_state(state, B, H, N, r, cdt)  # (B, H, N, N)
    from_state = []  # read out inside the loop: no (B, H, C, N, N) stack of states in memory
    for c in range(C):
        from_state.append(q_state[:, :, c] @ S)  # (B, H, L, N)
        S = chunk_decay[:, :, c] * S + state_inc[:, :, c]
    y = torch.stack(from_state, dim=2)  # (B, H, C, L, N)

    # --- intra-chunk scores, rows t = (a, i), columns s = (a', j): (B, H, C, a, l, a', l) ---
    # earlier sub-chunks a' < a through the middle factor e^{ref_a - E_a'}, put onto the keys so
    # that each sub-chunk a of queries meets all L keys of the chunk in one matmul: (l, N) @ (N, L).
    # (Pairs a' >= a are masked below.)
    keys = (f.k_end.unsqueeze(3) * f.between).reshape(B, H, C, n_sub, L, N)
    scores = torch.einsum("...tn,...sn->...ts", f.q, keys)  # (B, H, C, a, l, L); einsum avoids a copy of keys^T
    scores = scores.view(B, H, C, n_sub, l, n_sub, l)
    # same sub-chunk (s < t), plus the bonus of the current token on the diagonal (s = t)
    bonus = (r_ * u.to(cdt).view(1, H, 1, 1, N) * k_).sum(-1)  # r_t . (u * k_t)   (B, H, C, L)
    scores_same = f.same + torch.diag_embed(bonus.reshape(B, H, C, n_sub, l))

    ia = torch.arange(n_sub, device=dev)
    earlier = (ia.view(-1, 1, 1) > ia.view(1, -1, 1)).view(n_sub, 1, n_sub, 1)  # a' < a
    same = (ia.view(-1, 1, 1) == ia.view(1, -1, 1)).view(n_sub, 1, n_sub, 1)
    zero = torch.zeros((), dtype=cdt, device=dev)
    scores = torch.where(same, scores_same.unsqueeze(-2), torch.where(earlier, scores, zero))
    y = y + scores.reshape(B, H, C, L, L) @ v_  # (B, H, C, L, N)

    y = y.reshape(B, H, C * L, N)[:, :, :T].transpose(1, 2)  # (B, T, H, N)
    return y.to(r.dtype), S


@outside_autocast
def wkv6_chunked(r: Tensor, k: Tensor, v: Tensor, logw: Tensor, u: Tensor, state: Tensor | None = None,
                 chunk_size: int = 32) -> tuple[Tensor, Tensor]:
    """Chunk-parallel RWKV-6 recurrence: exact, with no exponent that can overflow; the CPU's
    reference form (its log-decay sums in float64, so it rounds like the single-token step to
    within float32 resolution and a converted model's prefill agrees with its decoding).

    Time is split into chunks of L = ``chunk_size`` (zero-padded at the end; a padded step has
    k = 0 and logw = 0, so it leaves the state untouched). Inside a chunk, with b_t the inclusive
    cumulative log-decay (b_0 = 0 before the chunk) and S_0 the state entering it, the recurrence
    unrolls to::

        y_t = (r_t * e^{b_{t-1}}) @ S_0                                   # from the carried state
            + sum_{s<t} [sum_i r_t[i] k_s[i] e^{b_{t-1}[i] - b_s[i]}] v_s   # intra-chunk, causal
            + (r_t . (u * k_t)) v_t                                       # bonus, current token
        S_L = e^{b_L} * S_0 + sum_s (k_s * e^{b_L - b_s})^T v_s            # state after the chunk

    b is non-increasing, so all of these exponents are <= 0. The trap is the intra-chunk score:
    the textbook factorisation (r_t e^{b_{t-1}}) . (k_s e^{-b_s}) needs e^{-b_s}, which overflows
    float32 as soon as the decays within a chunk sum below -88. So the chunk is cut into
    sub-chunks of l <= 8 tokens, and for sub-chunk a, ref_a is b just before its first token and
    E_a b at its last:

    * s in the same sub-chunk as t: the decay between them per pair (:class:`_Factors` ``same``).
    * s in an earlier sub-chunk a' < a: split the decay at two reference points,
      e^{b_{t-1} - b_s} = e^{b_{t-1} - ref_a} * e^{ref_a - E_a'} * e^{E_a' - b_s}, three factors
      that are each <= 1. The middle one is a small (a, a', N) table, and the scores are one
      batched matmul.
    * the carried state and the state update reuse the same factors: e^{b_{t-1}} =
      e^{b_{t-1} - ref_a} e^{ref_a}, and e^{b_L - b_s} = e^{E_a' - b_s} e^{b_L - E_a'}.

    This is exact algebra, not an approximation: a factor can only underflow where the true
    product is below the compute dtype's range anyway. logw is clamped to ``LOG_DECAY_FLOOR``
    (which keeps every sum finite). The state is passed from chunk to chunk by a loop over the
    T / L chunks; everything else is batched over chunks. Gradients come from autograd.

    Args and returns as :func:`wkv6_naive`; ``chunk_size`` >= 1 need not divide T (a multiple
    of 8 is fastest).
    """
    return _chunked(r, k, v, logw, u, state, chunk_size, _factors_float64)


@outside_autocast
def wkv6_chunked_fp32(r: Tensor, k: Tensor, v: Tensor, logw: Tensor, u: Tensor, state: Tensor | None = None,
                      chunk_size: int = 32) -> tuple[Tensor, Tensor]:
    """:func:`wkv6_chunked` with no float64 anywhere (float64 runs at 1/32-1/64 speed on most
    GPUs; CUDA inputs take this form): every exponent is a sum of exactly the log-decays it spans
    (exclusive prefix and suffix sums, pair sums), never a difference of two cumulative sums, so a
    weak decay after a very strong one keeps full float32 precision; the same-sub-chunk pairs'
    decays are recomputed in backward rather than saved (:class:`_IntraSubChunk`)."""
    return _chunked(r, k, v, logw, u, state, chunk_size, _factors_pair_sums)


def _float32(t: Tensor) -> Tensor:
    """t as a contiguous float32 tensor outside autograd (itself when it already is one)."""
    if t.dtype == torch.float32 and not t.requires_grad and t.is_contiguous():
        return t
    return t.detach().to(torch.float32).contiguous()


def wkv6_recurrent_cpu(r: Tensor, k: Tensor, v: Tensor, logw: Tensor, u: Tensor,
                       state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`~.wkv6.wkv6_naive`'s recurrence, compiled (float32, CPU, no gradient).

    Shapes as ``wkv6_naive``: r, k, v, logw (B, T, H, N), u (H, N), state (B, H, N, N) or None;
    returns y (B, T, H, N) in r's dtype and the final state (float32). Raises RuntimeError where
    the kernel is not available (see :func:`.kernels.library`).
    """
    _check_inputs(r, k, v, logw, u, state)
    forward = cpp_op("wkv6_forward")
    if forward is None:
        raise RuntimeError("the compiled CPU WKV6 kernel is not available")
    B, T, H, N = r.shape
    if state is None:
        s = torch.zeros(B, H, N, N, dtype=torch.float32)
    elif state.dtype == torch.float32 and not state.requires_grad:
        s = state.clone(memory_format=torch.contiguous_format)
    else:
        s = state.detach().to(torch.float32).clone(memory_format=torch.contiguous_format)
    y = forward(_float32(r), _float32(k), _float32(v), _float32(logw), _float32(u), s)
    return y if r.dtype == torch.float32 else y.to(r.dtype), s


def wkv6(
    r: Tensor,
    k: Tensor,
    v: Tensor,
    logw: Tensor,
    u: Tensor,
    state: Tensor | None = None,
    impl: str = "auto",
    chunk_size: int = 32,
    backend: Backend = None,
) -> tuple[Tensor, Tensor]:
    """RWKV-6 WKV with a choice of implementation.

    ``impl="auto"``: the op ``wkv6`` of :mod:`.backend`. On CUDA, where flash-linear-attention is
    installed, its kernels (:mod:`.wkv_fla`): the chunked ones when a gradient is needed, the
    recurrent one otherwise. On the CPU, spikelm's C++ kernel (:func:`wkv6_recurrent_cpu`) runs
    the recurrence for any T when no gradient is needed and the inputs are not float64, so a
    prefill and token-by-token decoding run the same loop. The tensor operations are
    :func:`wkv6_step` for T == 1 (decoding, where chunking only adds overhead) and, for longer
    inputs, the float32 chunked form on CUDA (the reference fla is checked against) and the
    float64-accumulating chunked form elsewhere (under ``torch.compile`` with the ``compile``
    backend). ``impl`` "naive", "chunked", "chunked_fp32", "fla_chunk" and "fla_recurrent" force one.
    """
    if impl == "auto":
        needs_grad = grad_needed(r, k, v, logw, u, state)
        how = resolve("wkv6", backend, r, cpp_ok=r.dtype != torch.float64 and not needs_grad,
                      cuda_ok=fla_usable(r, k, v, logw, u, state))
        if how == "cuda":
            return wkv6_fla(r, k, v, logw, u, state, mode=fla_mode_for(needs_grad))
        if how == "cpp":
            return wkv6_recurrent_cpu(r, k, v, logw, u, state)
        if r.shape[1] == 1:
            return (compiled(wkv6_step) if how == "compile" else wkv6_step)(r, k, v, logw, u, state)
        form = wkv6_chunked_fp32 if r.is_cuda else wkv6_chunked
        return (compiled(form) if how == "compile" else form)(r, k, v, logw, u, state, chunk_size=chunk_size)
    if impl == "naive":
        return wkv6_naive(r, k, v, logw, u, state)
    if impl == "chunked":
        return wkv6_chunked(r, k, v, logw, u, state, chunk_size=chunk_size)
    if impl == "chunked_fp32":
        return wkv6_chunked_fp32(r, k, v, logw, u, state, chunk_size=chunk_size)
    if impl in ("fla_chunk", "fla_recurrent"):
        _check_inputs(r, k, v, logw, u, state)
        return wkv6_fla(r, k, v, logw, u, state, mode=impl[4:])
    raise ValueError(f"impl must be 'auto', 'naive', 'chunked', 'chunked_fp32', 'fla_chunk' or 'fla_recurrent', "
                     f"got {impl!r}")
