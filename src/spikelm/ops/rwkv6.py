"""The RWKV-6 block's own ops: the elementwise passes of its time and channel mixes, and a whole
decoding step, each with its tensor operations (the reference) and its C++ kernel.

The passes (op ``rwkv6_mix`` of :mod:`.backend`):

* :func:`token_lerp`: the token shift with the ddlerp's and the channel mix's interpolations,
  ``x + (x_{t-1} - x) * (maa + lora)`` for G targets at once;
* :func:`decay`: the decay chain ``max(-exp(d + time_decay), floor)`` (float32 in every dtype);
* :func:`silu_gate`: the gate's SiLU times the GroupNorm output; :func:`relu_square`: the channel
  mix's activation; :func:`sigmoid_gate`: its receptance gate.

Each C++ pass makes one pass over memory where the tensor operations make two to five. In float32
they do those operations' arithmetic; with bf16 or fp16 activations they widen to float32, do the
same float32 arithmetic and round each output once, where the tensor operations round after each
step. The gates and relu write into the tensor they consume (their input is a temporary of the
model), as ``inplace=True`` activations do.

The decoding step (op ``rwkv6_block``, :func:`block_step`): every operation of
``spikelm.models.rwkv6.Block`` on one token in one call, in float32 between the products (the
weights read in their dtype), the WKV state float32. Its parameters are passed by name: the C++
kernel's own table (:func:`block_step_params`) says which it takes, in which order. Its twin is the
block's modules (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .backend import Backend, autocast_cpu, compiled, grad_needed, resolve
from .kernels import op as cpp_op

__all__ = ["token_shift", "token_lerp", "decay", "silu_gate", "relu_square", "sigmoid_gate", "block_step",
           "block_step_params", "takes_block_step", "KERNEL_DTYPES"]

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what the C++ kernels take


def token_shift(x: Tensor, last: Tensor) -> Tensor:
    """Previous token's vector for every position: (B, T, C) with ``last`` (B, C) in front."""
    if x.shape[1] == 1:  # decoding: the previous token is the state itself (no copy)
        return last.unsqueeze(1)
    return torch.cat((last.unsqueeze(1), x[:, :-1]), dim=1)


def _passes(x: Tensor, backend: Backend, *same: Tensor) -> str:
    """Which implementation the passes on ``x`` take: the C++ kernel needs float32, bf16 or fp16
    (``same``, the other inputs, in x's dtype), no gradient and no CPU autocast."""
    ok = x.dtype in KERNEL_DTYPES and all(t.dtype == x.dtype for t in same) and not grad_needed(x, *same) \
        and not autocast_cpu()
    return resolve("rwkv6_mix", backend, x, ok)


def _token_lerp(x: Tensor, shift: Tensor, maa: Tensor, lora: Tensor | None = None) -> Tensor:
    xx = token_shift(x, shift) - x  # (B, T, C)
    G, C = maa.shape
    mix = maa.view(G, 1, 1, C) if lora is None else maa.view(G, 1, 1, C) + lora
    return torch.addcmul(x, xx, mix)  # (G, B, T, C)


def token_lerp(x: Tensor, shift: Tensor, maa: Tensor, lora: Tensor | None = None, backend: Backend = None) -> Tensor:
    """``x + (x_{t-1} - x) * (maa[g] + lora[g])`` for g < G: x (B, T, C), shift (B, C) the token
    before x's first, maa (G, C), lora None or (G, B, T, C); returns (G, B, T, C). With a
    ``lora``, the C++ kernel writes into it."""
    how = _passes(x, backend, shift, maa, *(() if lora is None else (lora,)))
    if how == "cpp":
        return cpp_op("token_lerp")(x.contiguous(), shift.contiguous(), maa.contiguous(),
                                    None if lora is None else lora.contiguous())
    return (compiled(_token_lerp) if how == "compile" else _token_lerp)(x, shift, maa, lora)


def _decay(d: Tensor, time_decay: Tensor, floor: float) -> Tensor:
    return (-torch.exp(d + time_decay.float().view(-1))).clamp(min=floor)


def decay(d: Tensor, time_decay: Tensor, floor: float, backend: Backend = None) -> Tensor:
    """The log-decays ``max(-exp(d + time_decay), floor)``: d (..., A) float32, time_decay A values;
    float32. The C++ kernel writes into ``d``."""
    how = _passes(d, backend, time_decay) if d.dtype == torch.float32 else "torch"
    if how == "cpp":
        return cpp_op("rwkv6_decay_")(d.contiguous(), time_decay.reshape(-1).contiguous(), floor)
    return (compiled(_decay) if how == "compile" else _decay)(d, time_decay, floor)


def _silu_gate(y: Tensor, g: Tensor) -> Tensor:
    return y.to(g.dtype) * F.silu(g)


def silu_gate(y: Tensor, g: Tensor, backend: Backend = None) -> Tensor:
    """``y * silu(g)`` in g's dtype (y: the float32 GroupNorm output). The C++ kernel writes into g."""
    how = _passes(g, backend)
    if how == "cpp":
        return cpp_op("silu_gate_")(y.float().contiguous(), g.contiguous())
    return (compiled(_silu_gate) if how == "compile" else _silu_gate)(y, g)


def _relu_square(k: Tensor) -> Tensor:
    return torch.relu(k).square()


def relu_square(k: Tensor, backend: Backend = None) -> Tensor:
    """``relu(k)^2``. The C++ kernel writes into k."""
    how = _passes(k, backend)
    if how == "cpp":
        return cpp_op("relu_square_")(k.contiguous())
    return (compiled(_relu_square) if how == "compile" else _relu_square)(k)


def _sigmoid_gate(r: Tensor, v: Tensor) -> Tensor:
    return torch.sigmoid(r) * v


def sigmoid_gate(r: Tensor, v: Tensor, backend: Backend = None) -> Tensor:
    """``sigmoid(r) * v``. The C++ kernel writes into r."""
    how = _passes(r, backend, v)
    if how == "cpp":
        return cpp_op("sigmoid_gate_")(r.contiguous(), v.contiguous())
    return (compiled(_sigmoid_gate) if how == "compile" else _sigmoid_gate)(r, v)


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
