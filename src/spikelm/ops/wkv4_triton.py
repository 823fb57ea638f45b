"""WKV4 (RWKV-4, SpikeGPT) as fused Triton kernels: one launch forward, one launch backward.

flash-linear-attention has no RWKV-4 kernel, and the PyTorch forms in :mod:`.wkv4` are either a
loop of about twenty aten ops per token (:func:`~.wkv4.wkv4_naive`) or a chunked form that
builds an (L, L) table per chunk and saves about L times its input for backward
(:func:`~.wkv4.wkv4_parallel`). Here the recurrence of :func:`~.wkv4.wkv4_naive` runs inside the
kernel: one program per block of (batch row, channel) pairs, the loop over T inside it, the state
(aa, bb, pp) in fp32 registers, as the official RWKV-4 CUDA kernel does.

* :func:`wkv4_triton` (forward): step for step the loop's arithmetic (same expressions, same
  order, compiled without floating-point contraction), so on fp32 inputs it differs from the loop
  only where the device's ``exp`` differs from torch's (an ulp or two). With a gradient needed it
  also stores the state *entering* each token, (aa, bb, pp) in fp32: three values per input value,
  where the chunked form keeps sixteen.
* The backward kernel walks the tokens in reverse from those states and applies the adjoint of
  every operation of the loop (the two ``max`` included: a tie sends half the gradient each way,
  as ``torch.maximum`` does), so its gradients are the loop's autograd gradients up to the order
  of the fp32 additions: for w, u, k, v and the initial state, given gradients of the outputs
  and of the final state.

Both kernels are ``torch.library`` custom ops (``spikelm_triton::wkv4_forward`` /
``wkv4_backward``) with fake implementations, so ``torch.compile`` traces around them without
entering Triton. Inputs: k, v in fp32, bf16 or fp16 (read as they are and computed in fp32); w, u
and the state in fp32. y comes back in v's dtype, the state in fp32, as from the loop.

Triton is optional (``pip install spikelm[gpu]``) and imported on first use. ``TRITON_INTERPRET=1``
in the environment *before that first use* runs the kernels on CPU tensors through Triton's
interpreter, which is how the CPU tests check them against the loop
(``tests/ops/test_wkv4_triton.py``).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import Tensor

from .neuron_scan import HAS_TRITON

__all__ = ["HAS_TRITON", "WKV4_TRITON_DTYPES", "wkv4_triton", "usable"]

WKV4_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _block(n: int) -> tuple[int, int]:
    """(pairs per program, warps): a latency-bound scan wants many programs in flight, so small
    blocks once there are few pairs (B x C = 6144 at 8 x 768 gives 192 programs of 32)."""
    if n >= 64 * 1024:
        return 128, 4
    if n >= 16 * 1024:
        return 64, 2
    return 32, 1


@functools.lru_cache(maxsize=None)
def _kernels() -> Any:
    """Define the kernels on first use (importing triton costs time and it is optional)."""
    import triton
    import triton.language as tl

    @triton.jit
    def forward_kernel(
        w_ptr, u_ptr, k_ptr, v_ptr, aa0_ptr, bb0_ptr, pp0_ptr, y_ptr, aa_ptr, bb_ptr, pp_ptr, st_ptr,
        n, T, C, HAS_STATE: tl.constexpr, STORE_STATES: tl.constexpr, BLOCK: tl.constexpr,
    ):
        offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
        mask = offs < n
        c = offs % C
        base = (offs // C) * T * C + c  # element (b, 0, c) of a (B, T, C) tensor
        total = n * T  # elements of one (B, T, C) tensor: the stride between aa, bb and pp in st
        w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + c, mask=mask, other=0.0).to(tl.float32)
        if HAS_STATE:
            aa = tl.load(aa0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            bb = tl.load(bb0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            pp = tl.load(pp0_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
            aa = tl.zeros([BLOCK], dtype=tl.float32)
            bb = tl.zeros([BLOCK], dtype=tl.float32)
            pp = tl.full([BLOCK], -1e38, dtype=tl.float32)
        for t in range(T):
            p_ = base + t * C
            kt = tl.load(k_ptr + p_, mask=mask, other=0.0).to(tl.float32)
            vt = tl.load(v_ptr + p_, mask=mask, other=0.0).to(tl.float32)
            if STORE_STATES:
                tl.store(st_ptr + p_, aa, mask=mask)
                tl.store(st_ptr + total + p_, bb, mask=mask)
                tl.store(st_ptr + 2 * total + p_, pp, mask=mask)
            # output: the history (aa, bb at scale e^pp) and the current token with its bonus
            cur = u + kt
            q = tl.maximum(pp, cur)
            e1 = tl.exp(pp - q)
            e2 = tl.exp(cur - q)
            y = (e1 * aa + e2 * vt) / (e1 * bb + e2)
            tl.store(y_ptr + p_, y.to(y_ptr.dtype.element_ty), mask=mask)
            # state: decay the history by e^w, add the current token without bonus
            d = w + pp
            q = tl.maximum(d, kt)
            e1 = tl.exp(d - q)
            e2 = tl.exp(kt - q)
            aa = e1 * aa + e2 * vt
            bb = e1 * bb + e2
            pp = q
        tl.store(aa_ptr + offs, aa, mask=mask)
        tl.store(bb_ptr + offs, bb, mask=mask)
        tl.store(pp_ptr + offs, pp, mask=mask)

    @triton.jit
    def backward_kernel(
        w_ptr, u_ptr, k_ptr, v_ptr, st_ptr, gy_ptr, gaa_ptr, gbb_ptr, gpp_ptr,
        gw_ptr, gu_ptr, gk_ptr, gv_ptr, gaa0_ptr, gbb0_ptr, gpp0_ptr,
        n, T, C, BLOCK: tl.constexpr,
    ):
        offs = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
        mask = offs < n
        c = offs % C
        base = (offs // C) * T * C + c
        total = n * T
        w = tl.load(w_ptr + c, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptr + c, mask=mask, other=0.0).to(tl.float32)
        # gradients of the state after the token being undone (first: the final state's)
        ga = tl.load(gaa_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gb = tl.load(gbb_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gp = tl.load(gpp_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        gw = tl.zeros([BLOCK], dtype=tl.float32)
        gu = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(T):
            p_ = base + (T - 1 - i) * C
            kt = tl.load(k_ptr + p_, mask=mask, other=0.0).to(tl.float32)
            vt = tl.load(v_ptr + p_, mask=mask, other=0.0).to(tl.float32)
            gyt = tl.load(gy_ptr + p_, mask=mask, other=0.0).to(tl.float32)
            aa = tl.load(st_ptr + p_, mask=mask, other=0.0)
            bb = tl.load(st_ptr + total + p_, mask=mask, other=0.0)
            pp = tl.load(st_ptr + 2 * total + p_, mask=mask, other=-1e38)
            # -- the state update, undone: aa' = f1 aa + f2 v, bb' = f1 bb + f2, pp' = max(w + pp, k)
            d = w + pp
            q = tl.maximum(d, kt)
            f1 = tl.exp(d - q)
            f2 = tl.exp(kt - q)
            gf1 = ga * aa + gb * bb
            gf2 = ga * vt + gb
            gvt = ga * f2
            gkt = gf2 * f2
            gd = gf1 * f1
            # the gradient of max(d, k) as torch.maximum gives it: to the larger, half each on a tie
            gq = gp - gd - gkt
            gq_d = tl.where(d > kt, gq, tl.where(d == kt, 0.5 * gq, 0.0))
            gd = gd + gq_d
            gkt = gkt + (gq - gq_d)
            gw += gd
            n_ga = ga * f1
            n_gb = gb * f1
            n_gp = gd
            # -- the output, undone: y = (e1 aa + e2 v) / (e1 bb + e2), e = exp(. - max(pp, u + k))
            cur = u + kt
            q = tl.maximum(pp, cur)
            e1 = tl.exp(pp - q)
            e2 = tl.exp(cur - q)
            den = e1 * bb + e2
            y = (e1 * aa + e2 * vt) / den
            g_num = gyt / den
            g_den = -gyt * (y / den)
            n_ga += g_num * e1
            n_gb += g_den * e1
            ge1 = (g_num * aa + g_den * bb) * e1
            ge2 = (g_num * vt + g_den) * e2
            gvt += g_num * e2
            gq = -ge1 - ge2
            gq_p = tl.where(pp > cur, gq, tl.where(pp == cur, 0.5 * gq, 0.0))
            gcur = ge2 + (gq - gq_p)
            n_gp += ge1 + gq_p
            gu += gcur
            gkt += gcur
            tl.store(gk_ptr + p_, gkt.to(gk_ptr.dtype.element_ty), mask=mask)
            tl.store(gv_ptr + p_, gvt.to(gv_ptr.dtype.element_ty), mask=mask)
            ga, gb, gp = n_ga, n_gb, n_gp
        tl.store(gw_ptr + offs, gw, mask=mask)
        tl.store(gu_ptr + offs, gu, mask=mask)
        tl.store(gaa0_ptr + offs, ga, mask=mask)
        tl.store(gbb0_ptr + offs, gb, mask=mask)
        tl.store(gpp0_ptr + offs, gp, mask=mask)

    return forward_kernel, backward_kernel


# ---------------------------------------------------------------------------- the custom ops
def _custom_op(name: str) -> Any:
    """``torch.library.custom_op`` (torch >= 2.4); on an older torch the plain function, and its
    ``register_fake`` a no-op (torch.compile then cannot trace around it, nothing else changes)."""
    if hasattr(torch.library, "custom_op"):
        return torch.library.custom_op(name, mutates_args=())

    def plain(fn: Any) -> Any:
        fn.register_fake = lambda fake: fake
        return fn

    return plain


@_custom_op("spikelm_triton::wkv4_forward")
def _forward_op(w: Tensor, u: Tensor, k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor,
                has_state: bool, store_states: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y in v's dtype, final aa, bb, pp, the states entering each token (3, B, T, C) or an empty tensor)."""
    B, T, C = k.shape
    dev = k.device
    y = torch.empty(k.shape, dtype=v.dtype, device=dev)
    aa_t, bb_t, pp_t = (torch.empty(B, C, dtype=torch.float32, device=dev) for _ in range(3))
    st = torch.empty((3, B, T, C) if store_states else (0,), dtype=torch.float32, device=dev)
    n = B * C
    if n:
        block, warps = _block(n)
        forward_kernel, _ = _kernels()
        forward_kernel[(-(-n // block),)](
            w, u, k, v, aa, bb, pp, y, aa_t, bb_t, pp_t, st if store_states else y, n, T, C,
            HAS_STATE=has_state, STORE_STATES=store_states, BLOCK=block,
            num_warps=warps, enable_fp_fusion=False,  # no FMA contraction: the loop's roundings
        )
    return y, aa_t, bb_t, pp_t, st


@_forward_op.register_fake
def _(w, u, k, v, aa, bb, pp, has_state, store_states):
    B, T, C = k.shape
    state = [k.new_empty(B, C, dtype=torch.float32) for _ in range(3)]
    st = k.new_empty((3, B, T, C) if store_states else (0,), dtype=torch.float32)
    return (k.new_empty(k.shape, dtype=v.dtype), *state, st)


@_custom_op("spikelm_triton::wkv4_backward")
def _backward_op(w: Tensor, u: Tensor, k: Tensor, v: Tensor, st: Tensor, gy: Tensor, gaa: Tensor, gbb: Tensor,
                 gpp: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(gw (C,), gu (C,), gk, gv in k's and v's dtypes, gradients of the initial aa, bb, pp)."""
    B, T, C = k.shape
    dev = k.device
    gk, gv = torch.empty_like(k), torch.empty_like(v)
    gw_b, gu_b, gaa0, gbb0, gpp0 = (torch.empty(B, C, dtype=torch.float32, device=dev) for _ in range(5))
    n = B * C
    if n:
        block, warps = _block(n)
        _, backward_kernel = _kernels()
        backward_kernel[(-(-n // block),)](
            w, u, k, v, st, gy, gaa, gbb, gpp, gw_b, gu_b, gk, gv, gaa0, gbb0, gpp0, n, T, C,
            BLOCK=block, num_warps=warps, enable_fp_fusion=False,
        )
    return gw_b.sum(0), gu_b.sum(0), gk, gv, gaa0, gbb0, gpp0


@_backward_op.register_fake
def _(w, u, k, v, st, gy, gaa, gbb, gpp):
    B, T, C = k.shape
    vec = [w.new_empty(C, dtype=torch.float32) for _ in range(2)]
    state = [k.new_empty(B, C, dtype=torch.float32) for _ in range(3)]
    return (*vec, torch.empty_like(k), torch.empty_like(v), *state)


class _WKV4(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w: Tensor, u: Tensor, k: Tensor, v: Tensor, aa: Tensor, bb: Tensor, pp: Tensor,
                has_state: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        store = any(ctx.needs_input_grad[:7])
        y, aa_t, bb_t, pp_t, st = _forward_op(w, u, k, v, aa, bb, pp, has_state, store)
        if store:
            ctx.save_for_backward(w, u, k, v, st)
        ctx.has_state = has_state
        return y, aa_t, bb_t, pp_t

    @staticmethod
    def backward(ctx, gy: Tensor, gaa: Tensor, gbb: Tensor, gpp: Tensor) -> tuple[Tensor | None, ...]:
        w, u, k, v, st = ctx.saved_tensors
        gw, gu, gk, gv, gaa0, gbb0, gpp0 = _backward_op(w, u, k, v, st, gy.contiguous(), gaa.contiguous(),
                                                        gbb.contiguous(), gpp.contiguous())
        need = ctx.needs_input_grad
        out = [gw, gu, gk, gv] + ([gaa0, gbb0, gpp0] if ctx.has_state else [None] * 3)
        return (*[g if need[i] else None for i, g in enumerate(out)], None)


def usable(w: Tensor, k: Tensor) -> bool:
    """Whether :func:`wkv4_triton` takes these inputs where ``auto`` looks: CUDA tensors, triton
    installed, k/v in fp32/bf16/fp16 (float64 stays on the PyTorch forms)."""
    return HAS_TRITON and k.is_cuda and k.dtype in WKV4_TRITON_DTYPES and w.dtype != torch.float64


def wkv4_triton(w: Tensor, u: Tensor, k: Tensor, v: Tensor,
                state: tuple[Tensor, Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]]:
    """:func:`~.wkv4.wkv4_naive`'s recurrence in two Triton kernels, differentiable.

    Args and returns as ``wkv4_naive`` (inputs already checked by the caller, :func:`~.wkv4.wkv4`):
    w, u (C,); k, v (B, T, C); state (aa, bb, pp) of (B, C) or None. Raises ValueError for dtypes
    the kernels do not take, RuntimeError without triton.
    """
    if not HAS_TRITON:
        raise RuntimeError("the Triton WKV4 kernels need triton (pip install spikelm[gpu])")
    if k.dtype not in WKV4_TRITON_DTYPES or v.dtype not in WKV4_TRITON_DTYPES:
        raise ValueError(f"the Triton WKV4 kernels take fp32, bf16 or fp16 k and v, got {k.dtype} and {v.dtype}")
    f32 = torch.float32
    w_, u_ = w.to(f32).contiguous(), u.to(f32).contiguous()
    k_, v_ = k.contiguous(), v.contiguous()
    if state is None:
        empty = k.new_empty((0,), dtype=f32)
        aa0 = bb0 = pp0 = empty
    else:
        aa0, bb0, pp0 = (s.to(f32).contiguous() for s in state)
    y, aa, bb, pp = _WKV4.apply(w_, u_, k_, v_, aa0, bb0, pp0, state is not None)
    return y, (aa, bb, pp)
