"""spikelm's compiled CPU kernels: the one module that builds and loads them.

The C++ lives in ``csrc/`` (one file per op family). The kernels are built on first use with
PyTorch's extension builder (``torch.utils.cpp_extension``: a C++ compiler and ninja) and
registered as ``torch.ops.spikelm_cpu.*``, each with a fake (meta) implementation so that
``torch.compile`` traces a model that calls them. Where they cannot be built, :func:`library`
returns None once (logged) and every op keeps its tensor operations. Which op takes a kernel is
decided by :mod:`.backend`, never here; no module outside :mod:`spikelm.ops` imports this one.

**WKV6 forward** (``wkv6_forward``): the plain recurrence of :func:`~.wkv6.wkv6_naive`, per batch
row and head, with the state ``S`` (N x N, float32) kept in the loop::

    y_t[j] = sum_i r_t[i] S[i][j] + (sum_i r_t[i] u[i] k_t[i]) v_t[j]
    S[i][j] <- exp(logw_t[i]) S[i][j] + k_t[i] v_t[j]

the regrouping of :func:`~.wkv6.wkv6_step`. Heads run in parallel; the decays ``exp(logw)`` are
taken in one vectorised pass first (in the AVX2 build a polynomial within 2 ulp of the exact exp); with N a multiple of 32 the AVX2 build keeps 32 values of
``v_t`` and of ``y_t`` in registers while it walks the state's rows, so each state value is
loaded and stored once per token. Forward only, float32.

**One-row products** (``gemv``: ``x @ W.T`` for a contiguous (out, in) weight; ``gemv_t``:
``x @ B`` for a contiguous (in, out) matrix, the LoRA order, or a batch of them with baddbmm's
``c``). float32, bf16 or fp16 weights are widened to float32 in registers, the exact products
summed in float32 and the result rounded once to the weight's dtype: for bf16 the arithmetic of a
bf16 GEMM, at the speed of reading the 2-byte weights.

**A decoding step of an RWKV-6 block** (``rwkv6_block_step``): every operation of
``spikelm.models.rwkv6.Block`` on one token in one call, in float32 between the products (the
weights read in their dtype), the WKV state float32; its parameters by name
(``rwkv6_block_step_params``, the table in block_step.cpp).

**The level histogram** (``level_histogram``): the energy counter's histogram of spike-encoder
codes, in one parallel pass.

Each was measured against ``torch.compile`` and the tensor operations and kept for beating them
by 10% or more (docs/results.md, "CPU paths: torch.compile against the C++ kernels"); the
elementwise passes of an RWKV-6 prefill and the spike decoding over T > 1 steps did not, and
are ``torch.compile``'s or the tensor operations'.

**Instruction sets.** On x86-64 the loops are built twice, portable and for AVX2 + FMA + F16C,
and the second is chosen at run time where the CPU has them (``set_avx2(False)`` forces the
portable loops, which the tests also check). Elsewhere only the portable loops are built.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["library", "op", "reset"]

CSRC = Path(__file__).with_name("csrc")
# The C++ sources, each compiled on its own (each includes spikelm.h), linked into one library.
SOURCES = ("wkv6.cpp", "products.cpp", "block_step.cpp", "spikes.cpp", "register.cpp")
HEADERS = ("spikelm.h",)
CFLAGS = ("-O3", "-fopenmp", "-ffp-contract=off")


_UNLOADED = object()
_library: Any = _UNLOADED


def library() -> Any | None:
    """The compiled ops (``torch.ops.spikelm_cpu``), or None where they cannot be built (built and
    loaded at the first call; a plain function over a module variable, so that torch.compile
    reads it without tracing the build)."""
    global _library
    if _library is _UNLOADED:
        _library = _load()
    return _library


def reset() -> None:
    """Forget the loaded state (tests): the next :func:`library` call loads again."""
    global _library
    _library = _UNLOADED


@torch.compiler.disable
def _load() -> Any | None:
    try:
        from torch.utils.cpp_extension import load

        try:  # the ninja of the pip package (spikelm[cpu]), where no ninja is on PATH
            import ninja

            if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
                os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")
        except (ImportError, AttributeError):
            pass

        log.info("loading spikelm's compiled CPU kernels (built on first use, about 30 s)")
        load("spikelm_cpu_kernels", sources=[str(CSRC / name) for name in SOURCES], extra_include_paths=[str(CSRC)],
             extra_cflags=list(CFLAGS), extra_ldflags=["-fopenmp"], is_python_module=False, verbose=False)
        _register_fakes()
        return torch.ops.spikelm_cpu
    except Exception as e:  # no compiler, no ninja, no headers: the tensor-operation forms still work
        log.warning("spikelm's compiled CPU kernels are not available (%s: %s); using tensor operations",
                    type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
        return None


_overloads: dict[str, Any] = {}


def op(name: str) -> Any | None:
    """The compiled op ``name`` as its overload (``torch.ops.spikelm_cpu.<name>.default``: a few
    microseconds less per call than the packet, which counts in a decoding step), or None where
    the kernels are not available."""
    lib = library()
    if lib is None:
        return None
    f = _overloads.get(name)
    if f is None:
        f = _overloads[name] = getattr(lib, name).default
    return f


_fakes_registered = False


def _register_fakes() -> None:
    """Fake (meta) implementations: the shapes and dtypes each op returns, so torch.compile can
    trace a model that calls them without running them."""
    global _fakes_registered
    if _fakes_registered:
        return
    _fakes_registered = True
    fake = torch.library.register_fake

    @fake("spikelm_cpu::wkv6_forward")
    def _(r, k, v, logw, u, s):  # noqa: ANN001, ANN202
        return torch.empty_like(r)

    @fake("spikelm_cpu::level_histogram")
    def _(q, x, unit, layers):  # noqa: ANN001, ANN202
        return q.new_empty((2 << layers) + 2, dtype=torch.int64)

    @fake("spikelm_cpu::gemv")
    def _(x, w):  # noqa: ANN001, ANN202
        return w.new_empty(w.shape[0])

    @fake("spikelm_cpu::gemv_t")
    def _(x, b, c=None):  # noqa: ANN001, ANN202
        return b.new_empty(b.shape[0], b.shape[2]) if b.dim() == 3 else b.new_empty(b.shape[1])

    @fake("spikelm_cpu::rwkv6_block_step")
    def _(x, att_shift, wkv, ffn_shift, p, ln_eps, gn_eps):  # noqa: ANN001, ANN202
        return [torch.empty_like(x), torch.empty_like(x), torch.empty_like(wkv), torch.empty_like(x)]
