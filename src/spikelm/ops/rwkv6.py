"""A decoding step of an RWKV-6 block in one C++ call (op ``rwkv6_block`` of :mod:`.backend`).

:func:`block_step` runs every operation of ``spikelm.models.rwkv6.Block`` on one token, in float32
between the products (the weights read in their dtype), the WKV state float32: one call where the
block's modules make about a hundred tensor operations, whose dispatch costs more than the
block's arithmetic when decoding. Its parameters are passed by name: the C++ kernel's own table
(:func:`block_step_params`) says which it takes, in which order. Its twin is the block's modules
(tested).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .backend import Backend, autocast_cpu, resolve
from .kernels import op as cpp_op

__all__ = ["block_step", "block_step_params", "takes_block_step", "KERNEL_DTYPES"]

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the C++ step takes


_step_table: tuple[tuple[str, ...], tuple[bool, ...]] | None = None


def block_step_params() -> tuple[str, ...]:
    """The names of the block's parameters the C++ step takes, in its order: the kernel's own table
    (``rwkv6_block_step_params``), read once. Needs the kernels (see :func:`takes_block_step`)."""
    global _step_table
    if _step_table is None:
        names, kinds = cpp_op("rwkv6_block_step_params")()
        _step_table = (tuple(names), tuple(bool(k) for k in kinds))
    return _step_table[0]


def takes_block_step(x: Tensor, backend: Backend = None) -> bool:
    """Whether a step of a block on ``x`` (B, 1, C) takes the C++ kernel: the backend says so, the
    kernels are built, x is float32, bf16 or fp16, no gradient is possible and CPU autocast is off
    (the caller checks its own modules: a plain block with no hooks)."""
    ok = x.dtype in KERNEL_DTYPES and not torch.is_grad_enabled() and not autocast_cpu()
    return resolve("rwkv6_block", backend, x, ok) == "cpp"


def block_step(x: Tensor, state: tuple[Tensor, Tensor, Tensor], params: list[Tensor], ln_eps: float,
               gn_eps: float) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor]] | None:
    """One decoding step of a plain RWKV-6 block in one C++ call, or None where its matrices are
    not all of one dtype among float32, bf16 and fp16 (the caller then runs the block's modules,
    its twin). Call where :func:`takes_block_step`.

    ``x`` (B, 1, C), ``state`` (token-shift (B, C), WKV (B, H, N, N) float32, channel-mix shift),
    ``params``: the tensors named by :func:`block_step_params`, in that order (an empty tensor
    for a missing ``ln0``). Returns x's next value (B, 1, C) and the new state."""
    block_step_params()
    matrices = {t.dtype for t, is_matrix in zip(params, _step_table[1]) if is_matrix}
    if len(matrices) != 1 or matrices.pop() not in KERNEL_DTYPES:
        return None
    att_shift, wkv_state, ffn_shift = state
    y, att_shift, wkv_state, ffn_shift = cpp_op("rwkv6_block_step")(x[:, 0], att_shift, wkv_state, ffn_shift, params,
                                                                   ln_eps, gn_eps)
    return y.unsqueeze(1), (att_shift, wkv_state, ffn_shift)
