"""RWKV-4 checkpoints (BlinkDL's ``RWKV-4-Pile-*`` / ``RWKV-4-World-*`` ``.pth``): recognise the
layout, infer the config, build :class:`~spikelm.models.rwkv4.RWKV4`.

The layout is RWKV-LM v4's ``model.state_dict()`` (usually bf16 or fp16)::

    emb.weight [V, C]                          blocks.0.ln0.{weight,bias} [C]
    blocks.{i}.ln1 / ln2.{weight,bias} [C]     blocks.{i}.att.time_decay [A], time_first [A]
    blocks.{i}.att.time_mix_{k,v,r} [1, 1, C]  blocks.{i}.att.{key,value,receptance}.weight [A, C]
    blocks.{i}.att.output.weight [C, A]        blocks.{i}.ffn.time_mix_{k,r} [1, 1, C]
    blocks.{i}.ffn.key.weight [F, C]           blocks.{i}.ffn.value.weight [C, F]
    blocks.{i}.ffn.receptance.weight [C, C]    ln_out.{weight,bias} [C], head.weight [V, C]

**RWKV-4 or SpikeGPT: the caller decides.** SpikeGPT's releases use exactly these keys and shapes:
its LIF neurons have no parameters and its binary embedding is a function, so nothing in a file
says "spiking", and the weights' statistics do not reliably tell either (a sniffing heuristic would
silently run a network through the wrong nonlinearity). :func:`is_rwkv4_state_dict` is therefore
true for SpikeGPT files too, and the family is an explicit choice of whoever loads the file:

* spikelm's front-door loader keeps SpikeGPT as the default for this layout (as today) and should
  take a ``family=`` argument (``"spikegpt"`` default, ``"rwkv4"``) -- with a matching
  ``--family`` option on the commands that load checkpoints -- that routes ``"rwkv4"`` here;
* code that knows what it holds calls :func:`rwkv4_from_state_dict` directly.

A spikelm folder (``config.json`` with ``kind: rwkv4``) records the family and needs no choice.

Recognised and rejected with a message: files converted by the ``rwkv`` pip package (``_strategy``
key: transposed, re-typed weights), RWKV-LM's ``ffnPre`` variant (``blocks.0.ffnPre``), the
``head_q`` / ``head_k`` copy head, and the ``pos_emb`` of some v4neo runs.

This module imports only :mod:`spikelm.config`, :mod:`spikelm.errors`, :mod:`spikelm.models` and
torch; reading files is the checkpoint package's job.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ..config import RWKV4Config
from ..errors import CheckpointError
from .files import assign_weights
from ..models.rwkv4 import RWKV4

__all__ = ["RWKV4_LAYOUT", "infer_rwkv4_config", "is_rwkv4_state_dict", "rwkv4_from_state_dict", "rwkv4_layout_dims",
           "load_rwkv4_layout"]

RWKV4_LAYOUT = (
    "expected an RWKV-4 layout state dict (RWKV-4 or SpikeGPT): emb.weight, blocks.0.ln0, blocks.{i}.ln1/ln2, "
    "blocks.{i}.att.time_decay/time_first/time_mix_{k,v,r}, blocks.{i}.att.{key,value,receptance,output}.weight, "
    "blocks.{i}.ffn.time_mix_{k,r}, blocks.{i}.ffn.{key,receptance,value}.weight, ln_out, head.weight"
)
NEOX_VOCAB_SIZE = 50277  # RWKV-4-Pile: GPT-NeoX 20B_tokenizer.json
WORLD_VOCAB_SIZE = 65536  # RWKV-4-World: the RWKV World tokenizer


def is_rwkv4_state_dict(sd: dict[str, Any]) -> bool:
    """True for the RWKV-4 layout (SpikeGPT's too): ``time_first`` and ``time_mix_*``, none of
    RWKV-5/6's ``ln_x`` / ``time_maa_*`` / ``time_faaaa``."""
    keys = set(sd)
    if "emb.weight" not in keys:
        return False
    has_v4 = any(k.endswith(".att.time_first") for k in keys) and any(k.endswith(".att.time_mix_k") for k in keys)
    newer = any(".att.ln_x" in k or ".att.time_maa" in k or ".att.time_faaaa" in k for k in keys)
    return has_v4 and not newer


def _check_supported(sd: dict[str, Any], where: str) -> None:
    """The variants of the layout that neither RWKV4 nor SpikeGPT implements, each refused by name."""
    keys = set(sd)
    if "_strategy" in keys or "_version" in keys:
        raise CheckpointError(f"{where}: this file was converted by the `rwkv` pip package (strategy {sd.get('_strategy')!r}); "
                              "load the original .pth instead")
    if any(k.startswith("blocks.0.ffnPre.") for k in keys):
        raise CheckpointError(f"{where}: this is the 'ffnPre' variant (blocks.0.ffnPre: no time mixing in block 0); "
                              "spikelm implements the plain RWKV-4 block (SpikeGPT's model_type 'RWKV')")
    if "head_q.weight" in keys or "head_k.weight" in keys:
        raise CheckpointError(f"{where}: this checkpoint has the head_q/head_k copy head (RWKV_HEAD_QK_DIM > 0); "
                              "spikelm does not implement it")
    if any("pos_emb" in k for k in keys):
        raise CheckpointError(f"{where}: this checkpoint has a positional embedding (pos_emb); spikelm does not implement it")
    if not is_rwkv4_state_dict(sd):
        raise CheckpointError(f"{where}: not an RWKV-4 layout checkpoint; {RWKV4_LAYOUT}")


def rwkv4_layout_dims(sd: dict[str, Any], where: str = "state dict") -> tuple[int, int, int, int, int]:
    """(V, L, C, A, F): vocabulary, blocks, width, attention width and FFN width of an RWKV-4-layout
    state dict (RWKV-4 or SpikeGPT), from its key names and shapes; unsupported variants refused."""
    _check_supported(sd, where)
    try:
        V, C = sd["emb.weight"].shape
        L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        Fh = sd["blocks.0.ffn.key.weight"].shape[0]
        # the attention width (n_embd unless a file says otherwise; a file without the key is refused
        # when its keys are matched against the model's)
        A = sd["blocks.0.att.key.weight"].shape[0] if "blocks.0.att.key.weight" in sd else C
    except KeyError as e:
        raise CheckpointError(f"{where}: missing key {e.args[0]}; {RWKV4_LAYOUT}") from None
    except ValueError as e:
        raise CheckpointError(f"{where}: unexpected tensor shape ({e}); {RWKV4_LAYOUT}") from None
    return int(V), int(L), int(C), int(A), int(Fh)


def load_rwkv4_layout(sd: dict[str, Any], build: Callable[[], nn.Module], where: str, dtype: torch.dtype | None,
                      device: str | torch.device) -> nn.Module:
    """``build()`` (an RWKV4 or a SpikeGPT) with the weights of ``sd`` assigned, ``strict=True``.

    The keys must match exactly; ``time_decay`` / ``time_first`` stored as ``[1, 1, C]`` or the
    mixes as ``[C]`` (some exporters) are reshaped. Tensors are cast to ``dtype`` (default fp32;
    the releases are bf16/fp16) one at a time (:func:`.files.assign_weights`)."""
    with torch.device("meta"):  # shapes only: the weights are assigned from the file below
        model = build()
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    if missing or extra:
        cfg = model.cfg
        raise CheckpointError(
            f"{where}: keys do not match a {type(model).__name__} of {cfg.n_layer} layers x {cfg.n_embd} "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}); "
            f"{RWKV4_LAYOUT}"
        )
    fitted = {}
    for k, t in own.items():
        v = sd[k]
        if tuple(v.shape) != tuple(t.shape):
            if ".time_" in k and v.numel() == t.numel():
                v = v.reshape(t.shape)
            else:
                raise CheckpointError(f"{where}: {k} has shape {tuple(v.shape)}, expected {tuple(t.shape)}")
        fitted[k] = v
    return assign_weights(build, fitted, dtype=dtype, device=device, where=where)


def _default_tokenizer(V: int) -> str:
    if V == NEOX_VOCAB_SIZE:
        return "20B_tokenizer.json"
    if V in (256, 257):
        return "bytes"
    return "world"  # RWKV-4-World (65536) and anything else: the RWKV tokenizer


def infer_rwkv4_config(sd: dict[str, Any], tokenizer: str | None = None) -> RWKV4Config:
    """V, L, C, A (attention width) and F (FFN width) from the key names and shapes.

    ``tokenizer`` None picks one from V: ``20B_tokenizer.json`` for 50277 (the Pile models),
    ``bytes`` for 256/257, ``world`` otherwise (the World models have 65536).
    """
    V, L, C, A, Fh = rwkv4_layout_dims(sd)
    return RWKV4Config(vocab_size=V, n_layer=L, n_embd=C, dim_att=A, dim_ffn=Fh, tokenizer=tokenizer or _default_tokenizer(V))


def rwkv4_from_state_dict(sd: dict[str, Any], tokenizer: str | None = None, source: str | None = None,
                          dtype: torch.dtype | None = None, device: str | torch.device = "cpu") -> RWKV4:
    """Build an :class:`RWKV4` from an official state dict and load it with ``strict=True``
    (:func:`load_rwkv4_layout`)."""
    where = str(source) if source is not None else "state dict"
    _check_supported(sd, where)
    cfg = infer_rwkv4_config(sd, tokenizer)
    return load_rwkv4_layout(sd, lambda: RWKV4(cfg), where, dtype, device)
