"""Compiled CPU loops: the WKV6 recurrence, one-row bf16/fp16 products, spike decoding, and the
histogram of spike-encoder levels.

Each is a single pass over memory where the equivalent tensor operations make many (or, for the
products, where torch's path reads 2-byte weights at half the speed it could). They are
compiled on first use with PyTorch's own extension builder (``torch.utils.cpp_extension``; a C++
compiler and ninja; cached in ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``). Where
they cannot be built, or ``SPIKELM_NO_CPP_KERNELS=1`` is set, :func:`kernel` returns None once
(logged) and every caller keeps its tensor-operation form.

**WKV6 forward** (:func:`wkv6_recurrent_cpu`).

The chunked forms (:mod:`.wkv6`) run the recurrence as some hundred tensor operations per layer,
each a pass over memory; on a CPU that costs several times the arithmetic. This is the plain
recurrence of :func:`~.wkv6.wkv6_naive`. Per batch row and head, with the state ``S`` (N x N,
float32) kept in the loop::

    y_t[j] = sum_i r_t[i] S[i][j] + (sum_i r_t[i] u[i] k_t[i]) v_t[j]
    S[i][j] <- exp(logw_t[i]) S[i][j] + k_t[i] v_t[j]

the same regrouping as :func:`~.wkv6.wkv6_step`. Heads run in parallel (``at::parallel_for``); the
decays ``exp(logw)`` are taken in one vectorised pass first; with N a multiple of 32 the AVX2 build
keeps 32 values of ``v_t`` and of ``y_t`` in registers while it walks the state's rows, so each
state value is loaded and stored once per token. Forward only, float32 only: ``wkv6`` takes it on
the CPU when no gradient is needed (a prefill and each decoding step alike), and the other forms
otherwise.

**One-row low-precision products** (``gemv_lowp``: ``x @ W.T`` for a contiguous (out, in) weight;
``gemv_lowp_t``: ``x @ B`` for a contiguous (in, out) matrix, the LoRA order). bf16 or fp16
weights are widened to float32 in registers, the exact products summed in float32 and the result
rounded once to the weight's dtype: the arithmetic of a bf16 GEMM, at the speed of reading the
2-byte weights. :mod:`.linear` takes them for decoding on CPUs without native bf16 GEMMs.

**Spike decoding** (``mhse_decode``): the general path of
:func:`spikelm.spiking.encoding.mhse_decode` (rate codes, and MHSE over T > 1 steps) in one pass
per value instead of some ten float64 passes, with the same float operations in the same order
(so the same bits); the division by T comes from a table of the few possible levels.

**Instruction sets.** On x86-64 the loops are built twice, portable and for AVX2 + FMA + F16C,
and the second is chosen at run time where the CPU has them (``set_avx2(False)`` forces the
portable loops, which the tests also check). Elsewhere only the portable loops are built.

**Level histogram** (:func:`level_histogram`): for a spike encoder's integer levels ``q`` and its
input ``x``, the counts of the codes ``q + 2**l [x < 0]``, the values whose ``|x| / unit`` exceeds
the top level (computed as the encoder computes it: a float32 division, correctly rounded), and
the NaN levels, in one parallel pass with per-thread histograms. The energy counter's one-step
encoders are counted with it (``spikelm.energy.spike_counts``).
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["kernel", "wkv6_recurrent_cpu", "level_histogram"]

_SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cmath>
#include <algorithm>
#include <type_traits>
#include <cstring>
#include <mutex>
#include <vector>

// x86-64 with GCC or Clang: the loops below get a second build for AVX2 + FMA (+ F16C), chosen at
// run time, so the extension stays portable to any x86-64 CPU (and builds elsewhere without it).
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SPIKELM_X86 1
#include <immintrin.h>
#include <atomic>
static std::atomic<bool> avx2_allowed{true};  // set_avx2(false): the portable loops (their tests)
static bool has_avx2_fma() {
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
                           && __builtin_cpu_supports("f16c");
    return ok && avx2_allowed.load(std::memory_order_relaxed);
}
#endif

// Allow (true) or forbid (false) the AVX2 builds; returns whether they are now used.
bool set_avx2(bool allowed) {
#ifdef SPIKELM_X86
    avx2_allowed.store(allowed);
    return has_avx2_fma();
#else
    return false;
#endif
}

// One token of one head: y = r S + bonus v, then S <- diag(w) S + k v^T (S: N x N, [key][value],
// updated in place; w = exp(logw), the decays; acc: N floats of scratch).
using wkv6_token_fn = void (*)(const float*, const float*, const float*, const float*, float, float*, float*,
                               int64_t, float*);

static void wkv6_token(const float* rt, const float* kt, const float* vt, const float* w, float bonus, float* S,
                       float* yt, int64_t N, float* acc) {
    for (int64_t j = 0; j < N; ++j) acc[j] = 0.f;
    for (int64_t i = 0; i < N; ++i) {
        const float ri = rt[i], wi = w[i], ki = kt[i];
        float* Si = S + i * N;
        for (int64_t j = 0; j < N; ++j) {
            acc[j] += ri * Si[j];
            Si[j] = wi * Si[j] + ki * vt[j];
        }
    }
    for (int64_t j = 0; j < N; ++j) yt[j] = acc[j] + bonus * vt[j];
}

#ifdef SPIKELM_X86
// The same token for AVX2 + FMA. Where N is a multiple of 32 the value index j runs in blocks of
// 32 held in registers (four 8-lane vectors of v_t and of the output) while i walks the state's
// rows: each state value is loaded and stored once per token, and nothing else is. Other N: the
// loop above, compiled for these instructions.
__attribute__((target("avx2,fma"), flatten))
static void wkv6_token_avx2(const float* rt, const float* kt, const float* vt, const float* w, float bonus, float* S,
                            float* yt, int64_t N, float* acc) {
    if (N % 32 != 0) { wkv6_token(rt, kt, vt, w, bonus, S, yt, N, acc); return; }
    const __m256 vb = _mm256_set1_ps(bonus);
    for (int64_t j = 0; j < N; j += 32) {
        const __m256 v0 = _mm256_loadu_ps(vt + j), v1 = _mm256_loadu_ps(vt + j + 8);
        const __m256 v2 = _mm256_loadu_ps(vt + j + 16), v3 = _mm256_loadu_ps(vt + j + 24);
        __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
        for (int64_t i = 0; i < N; ++i) {
            const __m256 ri = _mm256_set1_ps(rt[i]), wi = _mm256_set1_ps(w[i]), ki = _mm256_set1_ps(kt[i]);
            float* Si = S + i * N + j;
            __m256 s0 = _mm256_loadu_ps(Si), s1 = _mm256_loadu_ps(Si + 8);
            __m256 s2 = _mm256_loadu_ps(Si + 16), s3 = _mm256_loadu_ps(Si + 24);
            a0 = _mm256_fmadd_ps(ri, s0, a0);
            a1 = _mm256_fmadd_ps(ri, s1, a1);
            a2 = _mm256_fmadd_ps(ri, s2, a2);
            a3 = _mm256_fmadd_ps(ri, s3, a3);
            _mm256_storeu_ps(Si, _mm256_fmadd_ps(wi, s0, _mm256_mul_ps(ki, v0)));
            _mm256_storeu_ps(Si + 8, _mm256_fmadd_ps(wi, s1, _mm256_mul_ps(ki, v1)));
            _mm256_storeu_ps(Si + 16, _mm256_fmadd_ps(wi, s2, _mm256_mul_ps(ki, v2)));
            _mm256_storeu_ps(Si + 24, _mm256_fmadd_ps(wi, s3, _mm256_mul_ps(ki, v3)));
        }
        _mm256_storeu_ps(yt + j, _mm256_fmadd_ps(vb, v0, a0));
        _mm256_storeu_ps(yt + j + 8, _mm256_fmadd_ps(vb, v1, a1));
        _mm256_storeu_ps(yt + j + 16, _mm256_fmadd_ps(vb, v2, a2));
        _mm256_storeu_ps(yt + j + 24, _mm256_fmadd_ps(vb, v3, a3));
    }
}
#endif

// One (batch row, head) of the recurrence over T tokens. r, k, v and the decays w = exp(logw)
// point at token 0 of this head (stride H N between tokens); S (N x N) is updated in place.
static void wkv6_head(const float* rp, const float* kp, const float* vp, const float* wp, const float* uh, float* S,
                      float* yp, int64_t T, int64_t stride, int64_t N, float* acc, wkv6_token_fn token) {
    for (int64_t t = 0; t < T; ++t) {
        const int64_t off = t * stride;
        const float* rt = rp + off;
        const float* kt = kp + off;
        float bonus = 0.f;  // r . (u * k): the current token's own contribution, y += bonus v
        for (int64_t i = 0; i < N; ++i) bonus += rt[i] * uh[i] * kt[i];
        token(rt, kt, vp + off, wp + off, bonus, S, yp + off, N, acc);
    }
}

// r, k, v, logw: (B, T, H, N) float32 contiguous; u: (H, N); s: (B, H, N, N), updated in place.
at::Tensor wkv6_forward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor logw, at::Tensor u, at::Tensor s) {
    const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
    auto y = at::empty_like(r);
    const float* rp = r.data_ptr<float>();
    const float* kp = k.data_ptr<float>();
    const float* vp = v.data_ptr<float>();
    // the decays, exp(logw), in one vectorised pass (a scalar exp per value costs more than the rest)
    auto decay = logw.exp();
    const float* wp = decay.data_ptr<float>();
    const float* up = u.data_ptr<float>();
    float* sp = s.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> acc(N);
        wkv6_token_fn token = wkv6_token;
#ifdef SPIKELM_X86
        if (has_avx2_fma()) token = wkv6_token_avx2;
#endif
        for (int64_t bh = begin; bh < end; ++bh) {
            const int64_t b = bh / H, h = bh % H, off = (b * T * H + h) * N;
            wkv6_head(rp + off, kp + off, vp + off, wp + off, up + h * N, sp + bh * N * N, yp + off, T, H * N, N,
                      acc.data(), token);
        }
    });
    return y;
}

// One-row products of bf16 / fp16 matrices (decoding): y[o] = sum_i W[o][i] x[i] for a contiguous
// (O, I) weight W in its own dtype and x as float32; exact products, float32 sums, y rounded once
// to W's dtype (round to nearest even), the arithmetic of a bf16 GEMM. Bound by memory: each
// weight is read once, in its 2 bytes.
static inline float bf16_value(uint16_t b) {
    const uint32_t u = uint32_t(b) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

template <bool BF16>
static float dot_lowp(const uint16_t* w, const float* x, int64_t n) {
    float s = 0.f;
    for (int64_t i = 0; i < n; ++i) {
        uint16_t b = w[i];
        const float wv = BF16 ? bf16_value(b) : float(*reinterpret_cast<const at::Half*>(&b));
        s += wv * x[i];
    }
    return s;
}

#ifdef SPIKELM_X86
template <bool BF16>
__attribute__((target("avx2,fma,f16c"))) static inline __m256 widen8(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if (BF16) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

template <bool BF16>
__attribute__((target("avx2,fma,f16c"))) static float dot_lowp_avx2(const uint16_t* w, const float* x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(widen8<BF16>(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(widen8<BF16>(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(widen8<BF16>(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(widen8<BF16>(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(widen8<BF16>(w + i), _mm256_loadu_ps(x + i), a0);
    const __m256 a = _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3));
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_movehdup_ps(q));
    return _mm_cvtss_f32(q) + dot_lowp<BF16>(w + i, x + i, n - i);
}
#endif

template <bool BF16, typename Out>
static void gemv_lowp_impl(const uint16_t* w, const float* x, int64_t O, int64_t I, Out* y) {
    at::parallel_for(0, O, 64, [&](int64_t begin, int64_t end) {
        for (int64_t o = begin; o < end; ++o) {
#ifdef SPIKELM_X86
            if (has_avx2_fma()) { y[o] = Out(dot_lowp_avx2<BF16>(w + o * I, x, I)); continue; }
#endif
            y[o] = Out(dot_lowp<BF16>(w + o * I, x, I));
        }
    });
}

// The other memory order, a @ b for b (I, O) contiguous (the LoRA matrices are stored so):
// y[o] = sum_i x[i] b[i][o], rows of b scaled and added into float32 sums over a block of outputs.
template <bool BF16>
static void axpy_rows(const uint16_t* b, const float* x, int64_t I, int64_t O, int64_t o0, int64_t o1, float* acc) {
    for (int64_t o = o0; o < o1; ++o) acc[o - o0] = 0.f;
    for (int64_t i = 0; i < I; ++i) {
        const uint16_t* bi = b + i * O;
        const float xi = x[i];
        for (int64_t o = o0; o < o1; ++o) {
            uint16_t v = bi[o];
            acc[o - o0] += xi * (BF16 ? bf16_value(v) : float(*reinterpret_cast<const at::Half*>(&v)));
        }
    }
}

#ifdef SPIKELM_X86
template <bool BF16>
__attribute__((target("avx2,fma,f16c"))) static void axpy_rows_avx2(const uint16_t* b, const float* x, int64_t I,
                                                                     int64_t O, int64_t o0, int64_t o1, float* acc) {
    int64_t o = o0;
    for (; o + 8 <= o1; o += 8) {
        __m256 a = _mm256_setzero_ps();
        for (int64_t i = 0; i < I; ++i) a = _mm256_fmadd_ps(_mm256_set1_ps(x[i]), widen8<BF16>(b + i * O + o), a);
        _mm256_storeu_ps(acc + (o - o0), a);
    }
    if (o < o1) axpy_rows<BF16>(b, x, I, O, o, o1, acc + (o - o0));
}
#endif

template <bool BF16, typename Out>
static void gemv_lowp_t_impl(const uint16_t* b, const float* x, const float* c, int64_t G, int64_t I, int64_t O,
                             Out* y) {
    // G products x_g @ b_g; the outputs of all of them split between the threads in blocks
    at::parallel_for(0, G * O, 256, [&](int64_t begin, int64_t end) {
        std::vector<float> acc(end - begin);
        for (int64_t idx = begin; idx < end;) {
            const int64_t g = idx / O, o0 = idx % O, o1 = std::min(O, o0 + (end - idx));
            const uint16_t* bg = b + g * I * O;
            const float* xg = x + g * I;
#ifdef SPIKELM_X86
            if (has_avx2_fma()) axpy_rows_avx2<BF16>(bg, xg, I, O, o0, o1, acc.data());
            else
#endif
            axpy_rows<BF16>(bg, xg, I, O, o0, o1, acc.data());
            for (int64_t o = o0; o < o1; ++o)
                y[g * O + o] = Out(c ? acc[o - o0] + c[g * O + o] : acc[o - o0]);
            idx += o1 - o0;
        }
    });
}

// float_values: x's values as float32: its own memory where it is a contiguous float32 tensor, else
// widened into buf (bf16 / fp16, without a torch operation per call), else through a cast kept
// alive in keep.
static const float* float_values(const at::Tensor& x, std::vector<float>& buf, at::Tensor& keep) {
    const int64_t n = x.numel();
    if (x.is_contiguous() && x.scalar_type() == at::kFloat) return x.data_ptr<float>();
    if (x.is_contiguous() && x.scalar_type() == at::kBFloat16) {
        const at::BFloat16* p = x.data_ptr<at::BFloat16>();
        buf.resize(n);
        for (int64_t i = 0; i < n; ++i) buf[i] = float(p[i]);
        return buf.data();
    }
    if (x.is_contiguous() && x.scalar_type() == at::kHalf) {
        const at::Half* p = x.data_ptr<at::Half>();
        buf.resize(n);
        for (int64_t i = 0; i < n; ++i) buf[i] = float(p[i]);
        return buf.data();
    }
    keep = x.to(at::kFloat).contiguous();
    return keep.data_ptr<float>();
}

// b: (I, O) or G matrices (G, I, O), bf16 or fp16, contiguous; x: I or G I values, any floating
// dtype; c: none or G O values added before the one rounding (baddbmm's c). Returns x @ b (+ c):
// (O,) for one matrix, (G, O) for G, in b's dtype.
at::Tensor gemv_lowp_t(at::Tensor x, at::Tensor b, c10::optional<at::Tensor> c) {
    TORCH_CHECK((b.dim() == 2 || b.dim() == 3) && b.is_contiguous(), "gemv_lowp_t: shapes");
    const int64_t G = b.dim() == 3 ? b.size(0) : 1, I = b.size(-2), O = b.size(-1);
    TORCH_CHECK(x.numel() == G * I && (!c.has_value() || c->numel() == G * O), "gemv_lowp_t: shapes");
    std::vector<float> xbuf, cbuf;
    at::Tensor xkeep, ckeep;
    const float* xp = float_values(x, xbuf, xkeep);
    const float* cp = c.has_value() ? float_values(*c, cbuf, ckeep) : nullptr;
    auto y = b.dim() == 3 ? at::empty({G, O}, b.options()) : at::empty({O}, b.options());
    if (b.scalar_type() == at::kBFloat16)
        gemv_lowp_t_impl<true>(reinterpret_cast<const uint16_t*>(b.data_ptr<at::BFloat16>()), xp, cp, G, I, O,
                               y.data_ptr<at::BFloat16>());
    else if (b.scalar_type() == at::kHalf)
        gemv_lowp_t_impl<false>(reinterpret_cast<const uint16_t*>(b.data_ptr<at::Half>()), xp, cp, G, I, O,
                                y.data_ptr<at::Half>());
    else TORCH_CHECK(false, "gemv_lowp_t: b must be bfloat16 or float16");
    return y;
}

// x: (I,) any floating dtype; w: (O, I) bf16 or fp16, contiguous. Returns (O,) in w's dtype.
at::Tensor gemv_lowp(at::Tensor x, at::Tensor w) {
    TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && x.numel() == w.size(1), "gemv_lowp: shapes");
    const int64_t O = w.size(0), I = w.size(1);
    std::vector<float> buf;
    at::Tensor keep;
    const float* xp = float_values(x, buf, keep);
    auto y = at::empty({O}, w.options());
    if (w.scalar_type() == at::kBFloat16)
        gemv_lowp_impl<true>(reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), xp, O, I,
                             y.data_ptr<at::BFloat16>());
    else if (w.scalar_type() == at::kHalf)
        gemv_lowp_impl<false>(reinterpret_cast<const uint16_t*>(w.data_ptr<at::Half>()), xp, O, I,
                              y.data_ptr<at::Half>());
    else TORCH_CHECK(false, "gemv_lowp: w must be bfloat16 or float16");
    return y;
}

// q: levels (float32, integer values 0 .. 2^layers - 1, or NaN), x: the encoder's input (same
// numel), unit: float32 of 1 or C (= x's last dimension) values. Returns int64
// [hist of q + 2^layers [x < 0] (2^(layers+1) bins) ..., clipped, nan].
// A value is clipped where fl(|x| / unit) > u_max, u_max = 2^l - 1. For l <= 23 the float32 just
// above u_max is u_max + ulp and a tie between them rounds to u_max (its last mantissa bit is 0),
// so fl(|x| / unit) > u_max exactly when |x| > unit (u_max + ulp / 2), a product that is exact in
// double (24 + 26 bits): one comparison per value instead of a division.
template <typename X, int64_t L>
static void level_histogram_range(const float* __restrict q, const X* __restrict x, const double* __restrict thr,
                                  int64_t begin, int64_t end, int64_t C, int64_t layers_rt, int64_t* __restrict out) {
    // one thread's share: K interleaved histograms, so consecutive values rarely wait on one counter
    constexpr int64_t K = 4;
    const int64_t layers = L > 0 ? L : layers_rt;
    const int64_t bins = int64_t(2) << layers, top = (int64_t(1) << layers) - 1;
    std::vector<int32_t> hv(K * bins, 0);
    int32_t* __restrict h = hv.data();
    int64_t clipped = 0, nans = 0;
    int64_t c = begin % C;  // the channel of value i (no division per value)
    for (int64_t i = begin; i < end; ++i, c = (c + 1 == C) ? 0 : c + 1) {
        const float qv = q[i];
        if (!(qv == qv)) { ++nans; continue; }
        const int64_t level = int64_t(qv);
        const float xv = float(x[i]);
        ++h[(i & (K - 1)) * bins + level + (int64_t(xv < 0.f) << layers)];
        clipped += (level == top) & (double(std::fabs(xv)) > thr[c]);
    }
    for (int64_t k = 0; k < K; ++k)
        for (int64_t b = 0; b < bins; ++b) out[b] += h[k * bins + b];
    out[bins] += clipped;
    out[bins + 1] += nans;
}

// q: levels (float32, integer values 0 .. 2^layers - 1, or NaN), x: the encoder's input (same
// numel), unit: float32 of 1 or C (= x's last dimension) values. out: int64
// [hist of q + 2^layers [x < 0] (2^(layers+1) bins) ..., clipped, nan].
template <typename X>
static void level_histogram_impl(const float* q, const X* x, const float* unit, int64_t n, int64_t C,
                                 int64_t layers, int64_t* out) {
    const int64_t width = (int64_t(2) << layers) + 2;
    const double u_max = double((int64_t(1) << layers) - 1);
    const double half_ulp = std::ldexp(1.0, int(layers) - 1 - 24);  // ulp(u_max) / 2
    std::vector<double> thr(C);
    for (int64_t j = 0; j < C; ++j) thr[j] = double(unit[j]) * (u_max + half_ulp);
    std::mutex lock;
    at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
        std::vector<int64_t> part(width, 0);
        switch (layers) {  // the common codes with their histogram size known to the compiler
            case 1: level_histogram_range<X, 1>(q, x, thr.data(), begin, end, C, layers, part.data()); break;
            case 2: level_histogram_range<X, 2>(q, x, thr.data(), begin, end, C, layers, part.data()); break;
            case 3: level_histogram_range<X, 3>(q, x, thr.data(), begin, end, C, layers, part.data()); break;
            case 4: level_histogram_range<X, 4>(q, x, thr.data(), begin, end, C, layers, part.data()); break;
            case 5: level_histogram_range<X, 5>(q, x, thr.data(), begin, end, C, layers, part.data()); break;
            default: level_histogram_range<X, 0>(q, x, thr.data(), begin, end, C, layers, part.data());
        }
        std::lock_guard<std::mutex> g(lock);
        for (int64_t b = 0; b < width; ++b) out[b] += part[b];
    });
}

at::Tensor level_histogram(at::Tensor q, at::Tensor x, at::Tensor unit, int64_t layers) {
    const int64_t bins = int64_t(2) << layers;
    auto out = at::zeros({bins + 2}, at::kLong);
    const int64_t n = q.numel(), C = unit.numel();
    const float* qp = q.data_ptr<float>();
    const float* up = unit.data_ptr<float>();
    int64_t* op = out.data_ptr<int64_t>();
    if (x.scalar_type() == at::kFloat) level_histogram_impl(qp, x.data_ptr<float>(), up, n, C, layers, op);
    else if (x.scalar_type() == at::kBFloat16) level_histogram_impl(qp, x.data_ptr<at::BFloat16>(), up, n, C, layers, op);
    else if (x.scalar_type() == at::kHalf) level_histogram_impl(qp, x.data_ptr<at::Half>(), up, n, C, layers, op);
    else TORCH_CHECK(false, "level_histogram: x must be float32, bfloat16 or float16");
    return out;
}

// The spike encoders' decoded values (spikelm.spiking.encoding.mhse_decode's general path), one
// pass per value, with that path's float operations in its order, so bit for bit its result:
//   a = fl32(|x| / s) (float32 division), min(a, a_max); q = floor(double(a) 2^(l-n) T [+ 1/2]);
//   out = copysign(q 2^(n-l) / T * double(s), x), converted to x's dtype as torch converts a double.
// x: float32 / bf16 / fp16, contiguous, C = its last dimension; scale: float32, 1 or C values.
#ifdef SPIKELM_X86
// The loop below for float32, eight values at a time: the same operations (each product is exact,
// the division by T comes from the table, the conversions round to nearest), so the same bits.
// Returns how many values of the row it did (a multiple of 8).
__attribute__((target("avx2,fma")))
static int64_t mhse_decode_row_avx2(const float* x, const float* scale, float* o, int64_t C, double up_steps,
                                    double half, float a_max, const double* level) {
    const __m256 sign = _mm256_set1_ps(-0.0f), amax = _mm256_set1_ps(a_max), zero = _mm256_setzero_ps();
    const __m256d sign_d = _mm256_set1_pd(-0.0), mul = _mm256_set1_pd(up_steps), add = _mm256_set1_pd(half);
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
        const __m256 xv = _mm256_loadu_ps(x + c), sv = _mm256_loadu_ps(scale + c);
        const __m256 a_raw = _mm256_div_ps(_mm256_andnot_ps(sign, xv), sv);
        const __m256 nan = _mm256_cmp_ps(a_raw, a_raw, _CMP_UNORD_Q);
        const __m256 a = _mm256_blendv_ps(_mm256_min_ps(a_raw, amax), zero, nan);  // NaN lanes: index 0, put back below
        __m256d half_out[2];
        for (int h = 0; h < 2; ++h) {
            const __m128 ah = h ? _mm256_extractf128_ps(a, 1) : _mm256_castps256_ps128(a);
            const __m128 sh = h ? _mm256_extractf128_ps(sv, 1) : _mm256_castps256_ps128(sv);
            const __m128 xh = h ? _mm256_extractf128_ps(xv, 1) : _mm256_castps256_ps128(xv);
            const __m256d q = _mm256_floor_pd(_mm256_add_pd(_mm256_mul_pd(_mm256_cvtps_pd(ah), mul), add));
            const __m256d lv = _mm256_i32gather_pd(level, _mm256_cvttpd_epi32(q), 8);
            const __m256d val = _mm256_mul_pd(lv, _mm256_cvtps_pd(sh));
            half_out[h] = _mm256_or_pd(val, _mm256_and_pd(_mm256_cvtps_pd(xh), sign_d));  // copysign (val >= 0)
        }
        const __m256 res = _mm256_set_m128(_mm256_cvtpd_ps(half_out[1]), _mm256_cvtpd_ps(half_out[0]));
        _mm256_storeu_ps(o + c, _mm256_blendv_ps(res, a_raw, nan));
    }
    return c;
}
#endif

template <typename X>
static void mhse_decode_impl(const X* x, const float* scale, X* out, int64_t n, int64_t C, int64_t T,
                             int64_t layers, int64_t n_int, bool init_half, float a_max) {
    const double up = std::ldexp(1.0, int(layers - n_int)), down = std::ldexp(1.0, int(n_int - layers));
    const double steps = double(T), half = init_half ? 0.5 : 0.0;
    // q is an integer from 0 to q_top: q 2^(n-l) / T, the same double, from a table (no division per value)
    const int64_t q_top = int64_t(std::floor(double(a_max) * up * steps + half));
    std::vector<double> level(q_top + 1);
    for (int64_t q = 0; q <= q_top; ++q) level[q] = double(q) * down / steps;
    const int64_t rows = n / C;
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / C), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const X* xr = x + r * C;
            X* o = out + r * C;
            int64_t c = 0;
#ifdef SPIKELM_X86
            if (std::is_same<X, float>::value && has_avx2_fma())
                c = mhse_decode_row_avx2(reinterpret_cast<const float*>(xr), scale, reinterpret_cast<float*>(o), C,
                                         double(up * steps), half, a_max, level.data());
#endif
            for (; c < C; ++c) {
                const float xv = float(xr[c]);
                float a = std::fabs(xv) / scale[c];
                if (!(a == a)) { o[c] = static_cast<X>(a); continue; }  // NaN in, NaN out
                a = std::min(a, a_max);
                double q = double(a) * up;
                if (T != 1) q *= steps;
                const int64_t qi = int64_t(std::floor(q + half));
                o[c] = static_cast<X>(std::copysign(level[qi] * double(scale[c]), double(xv)));
            }
        }
    });
}

at::Tensor mhse_decode(at::Tensor x, at::Tensor scale, int64_t T, int64_t layers, int64_t n_int, bool init_half,
                       double a_max) {
    TORCH_CHECK(x.is_contiguous() && scale.is_contiguous() && scale.scalar_type() == at::kFloat
                && (scale.numel() == 1 || (x.dim() > 0 && scale.numel() == x.size(-1))), "mhse_decode: shapes");
    auto out = at::empty_like(x);
    if (x.numel() == 0) return out;
    const int64_t n = x.numel(), C = x.dim() > 0 ? x.size(-1) : 1;
    std::vector<float> per_channel(C, scale.data_ptr<float>()[0]);  // one scale: the same for every channel
    if (scale.numel() == C) std::copy(scale.data_ptr<float>(), scale.data_ptr<float>() + C, per_channel.begin());
    const float* sp = per_channel.data();
    const float am = float(a_max);
    if (x.scalar_type() == at::kFloat)
        mhse_decode_impl(x.data_ptr<float>(), sp, out.data_ptr<float>(), n, C, T, layers, n_int, init_half, am);
    else if (x.scalar_type() == at::kBFloat16)
        mhse_decode_impl(x.data_ptr<at::BFloat16>(), sp, out.data_ptr<at::BFloat16>(), n, C, T, layers, n_int,
                         init_half, am);
    else if (x.scalar_type() == at::kHalf)
        mhse_decode_impl(x.data_ptr<at::Half>(), sp, out.data_ptr<at::Half>(), n, C, T, layers, n_int, init_half, am);
    else TORCH_CHECK(false, "mhse_decode: x must be float32, bfloat16 or float16");
    return out;
}

TORCH_LIBRARY(spikelm_cpu, m) {
    m.def("wkv6_forward(Tensor r, Tensor k, Tensor v, Tensor logw, Tensor u, Tensor(a!) s) -> Tensor");
    m.def("level_histogram(Tensor q, Tensor x, Tensor unit, int layers) -> Tensor");
    m.def("gemv_lowp(Tensor x, Tensor w) -> Tensor");
    m.def("gemv_lowp_t(Tensor x, Tensor b, Tensor? c=None) -> Tensor");
    m.def("set_avx2(bool allowed) -> bool");
    m.def("mhse_decode(Tensor x, Tensor scale, int T, int layers, int n_int, bool init_half, float a_max) -> Tensor");
}
TORCH_LIBRARY_IMPL(spikelm_cpu, CPU, m) {
    m.impl("wkv6_forward", &wkv6_forward);
    m.impl("level_histogram", &level_histogram);
    m.impl("gemv_lowp", &gemv_lowp);
    m.impl("gemv_lowp_t", &gemv_lowp_t);
    m.impl("mhse_decode", &mhse_decode);
}
TORCH_LIBRARY_IMPL(spikelm_cpu, CatchAll, m) {
    m.impl("set_avx2", &set_avx2);
}
"""


@functools.lru_cache(maxsize=None)
def kernel() -> Any | None:
    """The compiled ops (``torch.ops.spikelm_cpu``: ``wkv6_forward``, ``gemv_lowp``, ``gemv_lowp_t``,
    ``mhse_decode``, ``level_histogram``, ``set_avx2``), or None where they cannot be built."""
    if os.environ.get("SPIKELM_NO_CPP_KERNELS", "") not in ("", "0"):
        return None
    try:
        from torch.utils.cpp_extension import load_inline

        try:  # the ninja of the pip package (spikelm[cpu]), where no ninja is on PATH
            import ninja

            if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
                os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except (ImportError, AttributeError):
            pass

        log.info("loading spikelm's compiled CPU kernels (built on first use, about 30 s)")
        load_inline("spikelm_cpu_kernels", cpp_sources=_SOURCE, is_python_module=False,
                    extra_cflags=["-O3", "-fopenmp", "-ffp-contract=off"], extra_ldflags=["-fopenmp"], verbose=False)
        return torch.ops.spikelm_cpu
    except Exception as e:  # no compiler, no ninja, no headers: the tensor-operation forms still work
        log.warning("spikelm's compiled CPU kernels are not available (%s: %s); using tensor operations",
                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return None


def op(name: str) -> Any | None:
    """The compiled op ``name`` as its overload (``torch.ops.spikelm_cpu.<name>.default``: a few
    microseconds less per call than the packet, which counts in a decoding step), or None where
    the kernels are not available."""
    return None if kernel() is None else _overload(name)


@functools.lru_cache(maxsize=None)
def _overload(name: str) -> Any:
    return getattr(torch.ops.spikelm_cpu, name).default


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
    the kernel is not available (see :func:`kernel`).
    """
    forward = op("wkv6_forward")
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


def level_histogram(q: Tensor, x: Tensor, unit: Tensor, layers: int) -> tuple[list[int], int, int] | None:
    """(counts of the codes ``q + 2**layers [x < 0]``, clipped values, NaN levels), or None where
    the kernel is not available or the inputs are not CPU tensors it takes.

    ``q``: float32 integer levels in ``[0, 2**layers)`` (a spike encoder's, see
    ``spikelm.spiking.encoding.mhse_decode``); ``x``: the encoder's input (float32, bf16 or fp16,
    as many values); ``unit``: ``s w_l`` (float32, one value or one per channel of x's last
    dimension). A value is clipped where its level is the top one and ``|x| / unit`` (a float32
    division) exceeds ``2**layers - 1``, as the encoder decides it.
    """
    ops = kernel()
    if ops is None or q.device.type != "cpu" or x.device.type != "cpu" or q.dtype != torch.float32 \
            or x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or q.numel() != x.numel() \
            or unit.numel() not in (1, x.shape[-1] if x.dim() else 1) or layers > 16:
        return None
    out = ops.level_histogram(q.contiguous(), x.contiguous(), unit.detach().to(torch.float32).contiguous().reshape(-1),
                              layers).tolist()
    return out[:-2], out[-2], out[-1]
