"""Compiled CPU loops: the WKV6 recurrence, and the histogram of spike-encoder levels.

Both are single passes over memory where the equivalent tensor operations make many. They are
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

the same regrouping as :func:`~.wkv6.wkv6_step`, so a prefill rounds like token-by-token
decoding. Heads run in parallel (``at::parallel_for``). Forward only, float32 only: ``wkv6``
takes it on the CPU when no gradient is needed, and the chunked forms otherwise.

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
#include <mutex>
#include <vector>

// r, k, v, logw: (B, T, H, N) float32 contiguous; u: (H, N); s: (B, H, N, N), updated in place.
at::Tensor wkv6_forward(at::Tensor r, at::Tensor k, at::Tensor v, at::Tensor logw, at::Tensor u, at::Tensor s) {
    const int64_t B = r.size(0), T = r.size(1), H = r.size(2), N = r.size(3);
    auto y = at::empty_like(r);
    const float* rp = r.data_ptr<float>();
    const float* kp = k.data_ptr<float>();
    const float* vp = v.data_ptr<float>();
    const float* wp = logw.data_ptr<float>();
    const float* up = u.data_ptr<float>();
    float* sp = s.data_ptr<float>();
    float* yp = y.data_ptr<float>();
    at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
        std::vector<float> w(N), acc(N);
        for (int64_t bh = begin; bh < end; ++bh) {
            const int64_t b = bh / H, h = bh % H;
            float* S = sp + bh * N * N;
            const float* uh = up + h * N;
            for (int64_t t = 0; t < T; ++t) {
                const int64_t off = ((b * T + t) * H + h) * N;
                const float* rt = rp + off;
                const float* kt = kp + off;
                const float* vt = vp + off;
                float bonus = 0.f;
                for (int64_t i = 0; i < N; ++i) {
                    w[i] = std::exp(wp[off + i]);
                    bonus += rt[i] * uh[i] * kt[i];
                }
                for (int64_t j = 0; j < N; ++j) acc[j] = 0.f;
                for (int64_t i = 0; i < N; ++i) {
                    const float ri = rt[i], wi = w[i], ki = kt[i];
                    float* Si = S + i * N;
                    for (int64_t j = 0; j < N; ++j) {
                        acc[j] += ri * Si[j];
                        Si[j] = wi * Si[j] + ki * vt[j];
                    }
                }
                float* yt = yp + off;
                for (int64_t j = 0; j < N; ++j) yt[j] = acc[j] + bonus * vt[j];
            }
        }
    });
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

TORCH_LIBRARY(spikelm_cpu, m) {
    m.def("wkv6_forward(Tensor r, Tensor k, Tensor v, Tensor logw, Tensor u, Tensor(a!) s) -> Tensor");
    m.def("level_histogram(Tensor q, Tensor x, Tensor unit, int layers) -> Tensor");
}
TORCH_LIBRARY_IMPL(spikelm_cpu, CPU, m) {
    m.impl("wkv6_forward", &wkv6_forward);
    m.impl("level_histogram", &level_histogram);
}
"""


@functools.lru_cache(maxsize=None)
def kernel() -> Any | None:
    """The compiled ops (``torch.ops.spikelm_cpu``: ``wkv6_forward``, ``level_histogram``), or None
    where they cannot be built."""
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
                    extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
        return torch.ops.spikelm_cpu
    except Exception as e:  # no compiler, no ninja, no headers: the tensor-operation forms still work
        log.warning("spikelm's compiled CPU kernels are not available (%s: %s); using tensor operations",
                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return None


def wkv6_recurrent_cpu(r: Tensor, k: Tensor, v: Tensor, logw: Tensor, u: Tensor,
                       state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`~.wkv6.wkv6_naive`'s recurrence, compiled (float32, CPU, no gradient).

    Shapes as ``wkv6_naive``: r, k, v, logw (B, T, H, N), u (H, N), state (B, H, N, N) or None;
    returns y (B, T, H, N) in r's dtype and the final state (float32). Raises RuntimeError where
    the kernel is not available (see :func:`kernel`).
    """
    ops = kernel()
    if ops is None:
        raise RuntimeError("the compiled CPU WKV6 kernel is not available")
    B, T, H, N = r.shape
    f = [t.detach().to(torch.float32).contiguous() for t in (r, k, v, logw)]
    s = (torch.zeros(B, H, N, N, dtype=torch.float32) if state is None
         else state.detach().to(torch.float32).clone(memory_format=torch.contiguous_format))
    y = ops.wkv6_forward(*f, u.detach().to(torch.float32).contiguous(), s)
    return y.to(r.dtype), s


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
