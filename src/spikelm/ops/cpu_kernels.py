"""Compiled CPU loops: the WKV6 recurrence, one-row bf16/fp16 products, an RWKV-6 block's decoding
step and the elementwise passes of its mixes, spike decoding, and the histogram of
spike-encoder levels.

Each is a single pass over memory where the equivalent tensor operations make many (or, for the
products, where torch's path reads 2-byte weights at half the speed it could). The C++ lives in
``csrc/`` (one file per part, compiled as one unit in the order of ``SOURCES``). They are
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
decays ``exp(logw)`` are taken in one vectorised pass first (the polynomial exp below); with N a
multiple of 32 the AVX2 build keeps 32 values of ``v_t`` and of ``y_t`` in registers while it
walks the state's rows, so each state value is loaded and stored once per token. Forward only, float32 only: ``wkv6`` takes it on
the CPU when no gradient is needed (a prefill and each decoding step alike), and the other forms
otherwise.

**One-row products** (``gemv``: ``x @ W.T`` for a contiguous (out, in) weight; ``gemv_t``:
``x @ B`` for a contiguous (in, out) matrix, the LoRA order, or a batch of them with baddbmm's
``c``). float32, bf16 or fp16 weights are widened to float32 in registers, the exact products
summed in float32 and the result rounded once to the weight's dtype: for bf16 the arithmetic of a
bf16 GEMM, at the speed of reading the 2-byte weights. :mod:`.linear` takes them for bf16/fp16
decoding on CPUs without native bf16 GEMMs; the block step below uses them in every dtype.

**Spike decoding** (``mhse_decode``): the general path of
:func:`spikelm.spiking.encoding.mhse_decode` (rate codes, and MHSE over T > 1 steps) in one pass
per value instead of some ten float64 passes, with the same float operations in the same order
(so the same bits); the division by T comes from a table of the few possible levels.

**A decoding step of an RWKV-6 block** (``rwkv6_block_step``): every operation of
``spikelm.models.rwkv6.Block`` on one token in one call, in float32 between the products (the
weights read in their dtype), the WKV state float32. A step of the modules is about a hundred
tensor operations per block, each a few microseconds of dispatch, which cost more than the
block's arithmetic when decoding. ``Block`` takes it on the CPU without a gradient, for a plain
block with no hook on its modules; its twin is the modules' own forward (tested).

**The elementwise passes of the time and channel mixes** (``token_lerp``, ``rwkv6_decay_``,
``silu_gate_``, ``relu_square_``, ``sigmoid_gate_``): the token shift with the ddlerp's and the
channel mix's interpolations, the decay chain ``max(-exp(d + time_decay), floor)``, the gate's
SiLU times the GroupNorm output, relu squared, and the channel mix's sigmoid gate, each one pass
where the tensor operations make two to five. ``spikelm.models.rwkv6`` takes them without a
gradient (``_fused_cpu``), converted models included, since no module call is skipped; their
twins are the tensor operations they replace (tested). In float32 they do those operations'
arithmetic; with bf16 or fp16 activations they widen to float32, do the same float32 arithmetic
and round each output once to the activations' dtype, where the tensor operations round after
each step (tested exact against float32 arithmetic rounded once, where no exp is involved). The
decay chain is float32 in every model dtype. The AVX2 build's exp is a polynomial within 2 ulp
of the exact exp (tested); the WKV op takes its decays from it too.

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
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

log = logging.getLogger(__name__)

__all__ = ["kernel", "wkv6_recurrent_cpu", "level_histogram"]

# The C++ source, in the order it is compiled (one unit: later parts use earlier ones).
SOURCES = ("common.cpp", "wkv6.cpp", "products.cpp", "block_step.cpp", "prefill.cpp", "spikes.cpp", "register.cpp")


def _source() -> str:
    here = Path(__file__).with_name("csrc")
    return "\n".join((here / name).read_text(encoding="utf-8") for name in SOURCES)



NAME = "spikelm_cpu_kernels"  # the extension's name: its build folder in the cache


def _build_needed(name: str, source: str) -> bool:
    """Whether loading the extension will compile it: its build folder has no library yet, or
    holds another source than ``source`` (``load_inline`` writes ``main.cpp`` only when it
    changed, and ninja rebuilds what is older than it). True where it cannot tell."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        folder = Path(_get_build_directory(name, verbose=False))
        lib, main = folder / f"{name}.so", folder / "main.cpp"
        # load_inline's main.cpp: its implicit header, then the source (torch.utils.cpp_extension.load_inline)
        return (not lib.is_file() or main.read_text(encoding="utf-8") != "#include <torch/extension.h>\n" + source
                or lib.stat().st_mtime < main.stat().st_mtime)
    except Exception:  # noqa: BLE001 - a private helper of torch, or an unreadable cache: say it may take a while
        return True


@functools.lru_cache(maxsize=None)
def kernel() -> Any | None:
    """The compiled ops (``torch.ops.spikelm_cpu``: ``wkv6_forward``, ``gemv``, ``gemv_t``,
    ``rwkv6_block_step``, ``mhse_decode``, ``level_histogram``, ``set_avx2``), or None where they
    cannot be built."""
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

        source = _source()
        if _build_needed(NAME, source):  # the notice only when the compiler really runs (else every command said it)
            log.info("building spikelm's compiled CPU kernels (once, about 30 s)")
        load_inline(NAME, cpp_sources=source, is_python_module=False,
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
