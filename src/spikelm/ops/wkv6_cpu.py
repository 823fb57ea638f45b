"""WKV6 forward on the CPU as one compiled loop: the token-by-token recurrence, state in cache.

The chunked forms (:mod:`.wkv6`) run the recurrence as some hundred tensor operations per layer,
each a pass over memory; on a CPU that costs several times the arithmetic. This is the plain
recurrence of :func:`~.wkv6.wkv6_naive` in C++, compiled on first use with PyTorch's own
extension builder (``torch.utils.cpp_extension.load_inline``, a C++ compiler and ninja; cached
in ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``). Per batch row and head, with the
state ``S`` (N x N, float32) kept in the loop::

    y_t[j] = sum_i r_t[i] S[i][j] + (sum_i r_t[i] u[i] k_t[i]) v_t[j]
    S[i][j] <- exp(logw_t[i]) S[i][j] + k_t[i] v_t[j]

the same regrouping as :func:`~.wkv6.wkv6_step`, so a prefill rounds like token-by-token
decoding. Heads run in parallel (``at::parallel_for``). Forward only, float32 only: ``wkv6``
takes it on the CPU when no gradient is needed, and the chunked forms otherwise.

Where the compiler or ninja is missing, or ``SPIKELM_NO_CPP_KERNELS=1`` is set, :func:`kernel`
returns None once (logged) and ``wkv6`` keeps the chunked form.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["kernel", "wkv6_recurrent_cpu"]

_SOURCE = r"""
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <cmath>
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

TORCH_LIBRARY(spikelm_cpu, m) {
    m.def("wkv6_forward(Tensor r, Tensor k, Tensor v, Tensor logw, Tensor u, Tensor(a!) s) -> Tensor");
}
TORCH_LIBRARY_IMPL(spikelm_cpu, CPU, m) {
    m.impl("wkv6_forward", &wkv6_forward);
}
"""


@functools.lru_cache(maxsize=None)
def kernel() -> Any | None:
    """The compiled op (``torch.ops.spikelm_cpu.wkv6_forward``), or None where it cannot be built."""
    if os.environ.get("SPIKELM_NO_CPP_KERNELS", "") not in ("", "0"):
        return None
    try:
        from torch.utils.cpp_extension import load_inline

        log.info("loading the compiled CPU WKV6 kernel (built on first use, about 30 s)")
        load_inline("spikelm_wkv6_cpu", cpp_sources=_SOURCE, is_python_module=False,
                    extra_cflags=["-O3", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)
        return torch.ops.spikelm_cpu.wkv6_forward
    except Exception as e:  # no compiler, no ninja, no headers: the chunked form still works
        log.warning("the compiled CPU WKV6 kernel is not available (%s: %s); using the chunked form",
                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return None


def wkv6_recurrent_cpu(r: Tensor, k: Tensor, v: Tensor, logw: Tensor, u: Tensor,
                       state: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """:func:`~.wkv6.wkv6_naive`'s recurrence, compiled (float32, CPU, no gradient).

    Shapes as ``wkv6_naive``: r, k, v, logw (B, T, H, N), u (H, N), state (B, H, N, N) or None;
    returns y (B, T, H, N) in r's dtype and the final state (float32). Raises RuntimeError where
    the kernel is not available (see :func:`kernel`).
    """
    op = kernel()
    if op is None:
        raise RuntimeError("the compiled CPU WKV6 kernel is not available")
    B, T, H, N = r.shape
    f = [t.detach().to(torch.float32).contiguous() for t in (r, k, v, logw)]
    s = (torch.zeros(B, H, N, N, dtype=torch.float32) if state is None
         else state.detach().to(torch.float32).clone(memory_format=torch.contiguous_format))
    y = op(*f, u.detach().to(torch.float32).contiguous(), s)
    return y.to(r.dtype), s
