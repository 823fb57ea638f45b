"""The official RWKV-7 (x070) state-dict format: recognise it, infer its config, map it to
:class:`spikelm.models.rwkv7.RWKV7` and back.

An official file (what RWKV-LM's ``RWKV-v7`` trainer saves and BlinkDL releases as
``RWKV-x070-*.pth``, usually bf16) uses the module's own parameter names, with two differences,
both handled here and nowhere else:

* layer 0 carries ``att.v0 / v1 / v2``, the value-residual low-rank projection, which no code
  reads there (layer 0 *defines* ``v_first``); :func:`from_official` drops them,
  :func:`to_official` writes zeros of the right shapes back so that the layout is complete;
* tensors are bf16 (or fp16): :func:`from_official` casts them tensor by tensor, popping each from
  the source dict as it goes, so a memory-mapped file never has a second full copy alive.

Every size is read from the shapes (:func:`infer_rwkv7_config`): the low-rank sizes differ between
released models (C = 768: 64 / 64 / 32 / 128 for decay / a / v / gate), and the head size is
``att.r_k``'s second dimension. Reading files (``torch.load(weights_only=True, mmap=True)``) and
writing them atomically belongs to the checkpoint package's file helpers; this module takes and
returns dicts of tensors.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..config import RWKV7Config
from ..errors import CheckpointError
from ..models.rwkv7 import RWKV7
from .files import assign_weights

log = logging.getLogger(__name__)

__all__ = [
    "EXPECTED_LAYOUT",
    "from_official",
    "infer_rwkv7_config",
    "is_rwkv7_state_dict",
    "rwkv7_from_state_dict",
    "to_official",
]

EXPECTED_LAYOUT = (
    "expected an RWKV-7 (x070) state dict: emb.weight, blocks.{i}.ln1/ln2, blocks.{i}.att.{x_r, w0, w1, a0, "
    "k_k, r_k, receptance, ...}, blocks.{i}.ffn.{x_k, key, value}, ln_out, head.weight"
)

# Keys that only x070 has (RWKV-6 has att.time_maa_*, att.time_faaaa; RWKV-4/5 att.time_first).
_X070_MARKERS = (".att.r_k", ".att.w0", ".att.a0", ".att.k_k", ".att.x_r")
# Official layer-0 value-residual LoRA: present in the files, dead in the math.
_LAYER0_VALUE_LORA = ("blocks.0.att.v0", "blocks.0.att.v1", "blocks.0.att.v2")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


def is_rwkv7_state_dict(sd: Mapping[str, Any]) -> bool:
    """True if ``sd`` has the official x070 keys (emb.weight and ``blocks.*.att.{r_k, w0, a0, k_k, x_r}``)."""
    if "emb.weight" not in sd:
        return False
    return all(any(k.endswith(m) for k in sd) for m in _X070_MARKERS)


def _shape(sd: Mapping[str, Any], key: str) -> tuple[int, ...]:
    try:
        return tuple(sd[key].shape)
    except KeyError:
        raise CheckpointError(f"missing key {key!r}; {EXPECTED_LAYOUT}") from None


def infer_rwkv7_config(sd: Mapping[str, Any], tokenizer: str | None = None) -> RWKV7Config:
    """Every size of an official (or spikelm) RWKV-7 state dict, read from its key names and shapes.

    L: the number of ``blocks.{i}``; V, C: ``emb.weight``; H, N: ``att.r_k``; F: ``ffn.key``; the
    low-rank sizes: the second dim of ``att.w1``, ``a1``, ``v1`` (from layer 1: layer 0 may not
    have it), ``g1``. ``tokenizer`` None picks ``world`` for V = 65536 and ``bytes`` for 256/257.
    """
    if not is_rwkv7_state_dict(sd):
        raise CheckpointError(f"not an RWKV-7 state dict; {EXPECTED_LAYOUT}")
    if any(".ffn.s_emb" in k for k in sd):
        raise CheckpointError("this RWKV-7 file is a DeepEmbed variant (ffn.s_emb, s1, s2); spikelm implements the plain x070 model")
    V, C = _shape(sd, "emb.weight")
    layers = {int(m.group(1)) for k in sd if (m := _BLOCK.match(k))}
    if not layers:
        raise CheckpointError(f"no blocks.{{i}} keys; {EXPECTED_LAYOUT}")
    L = max(layers) + 1
    if layers != set(range(L)):
        raise CheckpointError(f"blocks {sorted(set(range(L)) - layers)} are missing; the file may be truncated")
    H, N = _shape(sd, "blocks.0.att.r_k")
    if H * N != C:
        raise CheckpointError(f"att.r_k is [{H}, {N}] but n_embd is {C}: heads x head size must equal n_embd")
    Fh = _shape(sd, "blocks.0.ffn.key.weight")[0]
    v_key = "blocks.1.att.v1" if L > 1 else "blocks.0.att.v1"
    dims = {
        "decay_lora_dim": _shape(sd, "blocks.0.att.w1")[1],
        "a_lora_dim": _shape(sd, "blocks.0.att.a1")[1],
        "gate_lora_dim": _shape(sd, "blocks.0.att.g1")[1],
    }
    if v_key in sd:  # a one-layer model without layer-0 v1 has no value residual at all: default
        dims["v_lora_dim"] = _shape(sd, v_key)[1]
    if tokenizer is None:
        tokenizer = "bytes" if V in (256, 257) else "world"
    return RWKV7Config(vocab_size=V, n_layer=L, n_embd=C, head_size=N, dim_ffn=Fh, tokenizer=tokenizer, **dims)


def from_official(sd: dict[str, Tensor], dtype: torch.dtype | None = torch.float32) -> dict[str, Tensor]:
    """Official x070 names -> :class:`RWKV7` state dict, cast to ``dtype`` tensor by tensor.

    Consumes ``sd`` (each tensor is popped as it is converted: with a memory-mapped bf16 file the
    peak is one fp32 copy plus one tensor; ``dtype`` None keeps each tensor's). Drops layer 0's unused ``att.v0/v1/v2``. A file
    converted by the ``rwkv`` pip package (transposed, ``_strategy`` key) is refused.
    """
    if "_strategy" in sd or "_version" in sd:
        raise CheckpointError(
            "this file was converted by the `rwkv` pip package (its weights are transposed and re-typed); "
            "load the original .pth instead"
        )
    if not is_rwkv7_state_dict(sd):
        raise CheckpointError(f"not an RWKV-7 state dict; {EXPECTED_LAYOUT}")
    out: dict[str, Tensor] = {}
    dropped = []
    for key in list(sd):
        t = sd.pop(key)
        if key in _LAYER0_VALUE_LORA:
            dropped.append(key)
            continue
        out[key] = t.to(dtype) if (dtype is not None and t.is_floating_point()) else t
    if dropped:
        log.debug("dropped layer 0's unused value-residual parameters %s", ", ".join(dropped))
    return out


def to_official(model_or_sd: RWKV7 | Mapping[str, Tensor], dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """:class:`RWKV7` (or its state dict) -> the official x070 layout, contiguous, on the CPU.

    Adds layer 0's ``att.v0/v1/v2`` as zeros (the official trainer keeps them; every reader
    ignores them), so the key set is exactly that of an RWKV-LM file.
    """
    sd = model_or_sd.state_dict() if isinstance(model_or_sd, RWKV7) else model_or_sd
    out = {k: v.detach().to(dtype).contiguous().cpu() for k, v in sd.items()}
    C = out["emb.weight"].shape[1]
    ref = next((k for k in out if k.endswith(".att.v1")), None)
    Dv = out[ref].shape[1] if ref is not None else RWKV7Config(n_embd=C, head_size=out["blocks.0.att.r_k"].shape[1]).v_lora_dim
    out.setdefault("blocks.0.att.v0", torch.zeros(1, 1, C, dtype=dtype))
    out.setdefault("blocks.0.att.v1", torch.zeros(C, Dv, dtype=dtype))
    out.setdefault("blocks.0.att.v2", torch.zeros(Dv, C, dtype=dtype))
    return out


def rwkv7_from_state_dict(
    sd: dict[str, Tensor], tokenizer: str | None = None, dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> RWKV7:
    """Build an :class:`RWKV7` from an official state dict (consumed) and load it with ``strict=True``.

    Built on the meta device and filled tensor by tensor (:func:`.files.assign_weights`): no
    second copy of the model exists while loading.
    """
    cfg = infer_rwkv7_config(sd, tokenizer)
    with torch.device("meta"):
        own = RWKV7(cfg).state_dict()
    fitted = from_official(sd, dtype=None)
    bad = sorted(set(own) ^ set(fitted)) or [k for k in own if tuple(own[k].shape) != tuple(fitted[k].shape)]
    if bad:  # wrong shapes in a later layer, unexpected or missing keys
        raise CheckpointError(f"the RWKV-7 state dict does not fit the inferred config {cfg}: first mismatch at {bad[:3]}")
    return assign_weights(lambda: RWKV7(cfg), fitted, dtype=dtype, device=device, where="RWKV-7 state dict")
