"""WKV6 and WKV7 on CUDA through flash-linear-attention's Triton kernels (``fla-core``).

flash-linear-attention (fla) is the maintained home of fast RWKV kernels; spikelm calls it rather
than keeping kernels of its own (``pip install spikelm[gpu]`` installs it). Two forms of each:

* ``chunk``: ``fla.ops.rwkv6.chunk_rwkv6`` / ``fla.ops.rwkv7.chunk_rwkv7``, the chunked
  (matrix-product) kernels with a fused backward: what training and long prefills want;
* ``recurrent``: ``fused_recurrent_rwkv6`` / ``fused_recurrent_rwkv7``, one kernel that steps the
  recurrence with the state in fp32 registers: the arithmetic of the naive loop, fast for short
  inputs and for scoring, where its error stays the loop's (the chunked kernels' final state is
  about 1e-3 off in bf16, see docs/results.md). Forward only (see :func:`_forward_only`).

Conventions at the boundary, all checked against spikelm's float64 loops
(``tests/ops/test_wkv_fla.py`` under Triton's interpreter, ``tests/gpu/test_cuda.py`` on a GPU):

* shapes (B, T, H, N) for r, k, v and the log-decays, (H, N) for RWKV-6's bonus ``u``: fla's
  ``head_first=False`` layout, as spikelm's;
* state (B, H, K, V): fla keeps [key, value], and so does spikelm for both WKV6 and WKV7 (the
  official RWKV-7 code keeps [value, key]; spikelm's checkpoint readers transpose on load), so
  the state passes through unchanged;
* decays: fla takes the per-step *log* decay (``w`` of ``chunk_rwkv6`` and ``chunk_rwkv7``),
  exactly spikelm's ``logw``; ``scale=1`` (fla's default 1/sqrt(K) is an attention habit RWKV does
  not have); RWKV-7's ``a``, ``b`` as spikelm's model passes them (``-kk``, ``kk * alpha``);
* dtypes: spikelm's models pass fp32 r, k, v (the products' values, widened without loss). Under
  bf16/fp16 autocast (training) the chunked kernels get them back in that dtype, as fla's own
  models train (:func:`_chunk_dtype`; RWKV-7's a and b too), and their inner products run in it;
  otherwise inputs go as they come, fp32 (fla's chunked products then in tf32/fp32). The
  recurrent kernels always get them as they come. State and accumulation are fp32 inside the
  kernels; y comes back in r's dtype, the final state fp32, as from spikelm's forms. fla warns
  that its RWKV-7 chunked kernel "does not support float32 on some platforms"; the GPU tests
  check it on the machine at hand.

Imported on first use (fla imports triton and many modules). Without fla, or for tensors not on
CUDA, :func:`usable` is False and the callers (:func:`~.wkv6.wkv6`, :func:`~.wkv7.wkv7`) keep
their PyTorch forms. ``TRITON_INTERPRET=1`` set before the first use runs the recurrent kernels on
CPU tensors through Triton's interpreter (the chunked ones use constructs the interpreter lacks).
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import torch
from torch import Tensor

__all__ = ["HAS_FLA", "FLA_DTYPES", "MODES", "usable", "mode_for", "wkv6_fla", "wkv7_fla"]

HAS_FLA = importlib.util.find_spec("fla") is not None
FLA_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
MODES = ("chunk", "recurrent")


def usable(*tensors: Tensor | None) -> bool:
    """Whether fla takes these inputs: fla installed, every tensor on CUDA, none float64."""
    ts = [t for t in tensors if t is not None]
    return HAS_FLA and all(t.is_cuda and t.dtype in FLA_DTYPES for t in ts)


def mode_for(needs_grad: bool) -> str:
    """The form ``auto`` takes: the chunked kernels when a gradient is needed (training), the
    recurrent one otherwise (scoring, prefill and decoding: the loop's error, one launch)."""
    return "chunk" if needs_grad else "recurrent"


def _ops(name: str) -> Any:
    if not HAS_FLA:
        raise RuntimeError("flash-linear-attention is not installed (pip install spikelm[gpu], or fla-core)")
    if name == "rwkv6":
        from fla.ops.rwkv6 import chunk_rwkv6, fused_recurrent_rwkv6

        return chunk_rwkv6, fused_recurrent_rwkv6
    from fla.ops.rwkv7 import chunk_rwkv7, fused_recurrent_rwkv7

    # fla warns on every fp32 call that the kernel "does not support float32 on some platforms"
    # (the GPU tests check this platform); a filter, since its call path resets a local one
    warnings.filterwarnings("ignore", message="ChunkDeltaRuleFunction does not support float32")
    return chunk_rwkv7, fused_recurrent_rwkv7


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")


def _forward_only(mode: str, *tensors: Tensor | None) -> None:
    """fla's recurrent kernels are for inference: RWKV-7's has no backward, and RWKV-6's drops the
    gradient of the final state (fla 0.6: its backward ignores ``dht``), so a gradient through
    them is refused rather than silently wrong."""
    if mode == "recurrent" and torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        raise ValueError("fla's recurrent WKV kernels are forward-only (RWKV-7's has no backward, RWKV-6's drops the "
                         "final state's gradient); use impl='fla_chunk' or 'auto' where a gradient is needed")


def _state(state: Tensor | None) -> Tensor | None:
    return None if state is None else state.float().contiguous()


def _chunk_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype fla's chunked kernels take the activations in: under bf16/fp16 autocast (training),
    that dtype, as fla's own models train. Nothing is lost on the way in: r, k, v are the outputs
    of that dtype's matrix products, widened to fp32 by the model; the kernels' inner products then
    run in it. Otherwise (fp32 training, no autocast) None: as they come."""
    dev = x.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        dt = torch.get_autocast_dtype(dev)
        return dt if dt in (torch.bfloat16, torch.float16) else None
    return None


def _cast(dt: torch.dtype | None, *ts: Tensor) -> list[Tensor]:
    return list(ts) if dt is None else [t.to(dt) for t in ts]


def _out(y: Tensor, state: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    return (y if y.dtype == r.dtype else y.to(r.dtype)), state.float()


def wkv6_fla(r: Tensor, k: Tensor, v: Tensor, logw: Tensor, u: Tensor, state: Tensor | None = None,
             mode: str = "chunk") -> tuple[Tensor, Tensor]:
    """:func:`~.wkv6.wkv6_naive`'s recurrence through fla (inputs checked by the caller).

    r, k, v, logw (B, T, H, N); u (H, N); state (B, H, N, N) [key, value] or None. Returns y
    (B, T, H, N) in r's dtype and the final state (fp32); differentiable in every input with
    ``mode="chunk"``.
    """
    _check_mode(mode)
    _forward_only(mode, r, k, v, logw, u, state)
    chunk, recurrent = _ops("rwkv6")
    fn = chunk if mode == "chunk" else recurrent
    rr, kk, vv = _cast(_chunk_dtype(r) if mode == "chunk" else None, r, k, v)
    with torch.autocast(device_type=r.device.type, enabled=False):
        y, s = fn(rr, kk, vv, logw.float(), u, scale=1.0, initial_state=_state(state), output_final_state=True)
    return _out(y, s, r)


def wkv7_fla(r: Tensor, k: Tensor, v: Tensor, logw: Tensor, a: Tensor, b: Tensor, state: Tensor | None = None,
             mode: str = "chunk") -> tuple[Tensor, Tensor]:
    """:func:`~.wkv7.wkv7_naive`'s recurrence through fla (inputs checked by the caller).

    r, k, v, logw, a, b (B, T, H, N); state (B, H, N, N) [key, value] or None. Returns y in r's
    dtype and the final state (fp32); differentiable in every input with ``mode="chunk"``.
    """
    _check_mode(mode)
    _forward_only(mode, r, k, v, logw, a, b, state)
    chunk, recurrent = _ops("rwkv7")
    dt = _chunk_dtype(r) if mode == "chunk" else None
    with torch.autocast(device_type=r.device.type, enabled=False):
        if mode == "chunk":
            rr, kk, vv, aa, bb = _cast(dt, r, k, v, a, b)
            # no lower_bound: fla trusts it unchecked, and this op takes any log-decay <= 0
            y, s = chunk(rr, logw.float(), kk, vv, aa, bb, scale=1.0, initial_state=_state(state),
                         output_final_state=True)
        else:
            y, s = recurrent(r, logw.float(), k, v, a, b, scale=1.0, initial_state=_state(state), output_final_state=True)
    return _out(y, s, r)
