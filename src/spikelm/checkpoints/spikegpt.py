"""SpikeGPT's released checkpoints: recognise the layout, infer the config, load into :class:`SpikeGPT`.

The authors' code (ridgerchu/SpikeGPT) saves ``model.state_dict()`` with ``torch.save``; the
released OpenWebText model (Hugging Face ``ridger/SpikeGPT-OpenWebText-216M``) is such a ``.pth``.
Its keys are the RWKV-4 layout::

    emb.weight [V, C]                          blocks.0.ln0.{weight,bias} [C]
    blocks.{i}.ln1 / ln2.{weight,bias} [C]     blocks.{i}.att.time_decay [C], time_first [C]
    blocks.{i}.att.time_mix_{k,v,r} [1, 1, C]  blocks.{i}.att.{key,value,receptance,output}.weight [C, C]
    blocks.{i}.ffn.time_mix_{k,r} [1, 1, C]    blocks.{i}.ffn.key.weight [4C, C], value [C, 4C]
    ln_out.{weight,bias} [C]                   blocks.{i}.ffn.receptance.weight [C, C]
    head.weight [V, C]

The LIF neurons have no parameters, so nothing in the file says "spiking": **an RWKV-4 checkpoint
(BlinkDL's RWKV-4-Pile releases) has exactly the same keys and shapes**. It loads, but a network
trained without spikes gives meaningless output through LIF neurons; no file-level test can tell
the two apart. Files with ``time_decay`` / ``time_first`` stored as ``[1, 1, C]`` or the mixes as
``[C]`` (some exporters) are reshaped.

Tokenizers (:func:`infer_spikegpt_config`):

* ``V == 50277``: GPT-NeoX ``20B_tokenizer.json`` (the released 216M model; the code's "pile" mode).
* ``V in (256, 257)``: ``bytes`` (spikelm's byte models).
* anything else: a *character vocabulary*. The code's ``train.py`` (char mode) builds the
  vocabulary from the sorted unique characters of the training text and writes ``vocab.json``:
  a JSON object mapping each id (as a string) to its character, ``{"0": "\\n", "1": " ", ...}``,
  encoded as **UTF-16** (``vocab_book.json`` in the repository is one). Such a file is named
  ``char:<path>`` in the config and read by :class:`CharTokenizer`. Without a given path, the
  loader looks for ``vocab.json`` beside the checkpoint.

Not supported (rejected with a message): the code's ``RWKV-ffnPre`` variant (``blocks.0.ffnPre``,
no time mixing in block 0) and ``RWKV_HEAD_QK_DIM > 0`` (``head_q`` / ``head_k``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..data.tokenizers import CHAR_PREFIX, CHAR_VOCAB_FILE, is_char_vocab
from ..errors import CheckpointError
from ..models.spikegpt import SpikeGPT, SpikeGPTConfig
from .files import read_tensors

__all__ = [
    "SPIKEGPT_LAYOUT",
    "NEOX_VOCAB_SIZE",
    "is_spikegpt_state_dict",
    "infer_spikegpt_config",
    "spikegpt_from_state_dict",
    "load_spikegpt",
]

SPIKEGPT_LAYOUT = (
    "expected a SpikeGPT (RWKV-4 layout) state dict: emb.weight, blocks.0.ln0, blocks.{i}.ln1/ln2, "
    "blocks.{i}.att.time_decay/time_first/time_mix_{k,v,r}, blocks.{i}.att.{key,value,receptance,output}.weight, "
    "blocks.{i}.ffn.time_mix_{k,r}, blocks.{i}.ffn.{key,receptance,value}.weight, ln_out, head.weight"
)
NEOX_VOCAB_SIZE = 50277
NEOX_TOKENIZER_FILE = "20B_tokenizer.json"


# ----------------------------------------------------------------------------- layout
def is_spikegpt_state_dict(sd: dict[str, Any]) -> bool:
    """True for the SpikeGPT / RWKV-4 layout: ``time_first`` and ``time_mix_*`` (RWKV-5/6 have
    ``ln_x`` / ``time_maa_*`` / ``time_faaaa`` instead)."""
    keys = set(sd)
    if "emb.weight" not in keys:
        return False
    has_v4 = any(k.endswith(".att.time_first") for k in keys) and any(k.endswith(".att.time_mix_k") for k in keys)
    newer = any(".att.ln_x" in k or ".att.time_maa" in k or ".att.time_faaaa" in k for k in keys)
    return has_v4 and not newer


def _check_supported(sd: dict[str, Any], where: str) -> None:
    keys = set(sd)
    if any(k.startswith("blocks.0.ffnPre.") for k in keys):
        raise CheckpointError(f"{where}: this is SpikeGPT's 'RWKV-ffnPre' variant (blocks.0.ffnPre); spikelm implements model_type 'RWKV' only")
    if "head_q.weight" in keys or "head_k.weight" in keys:
        raise CheckpointError(f"{where}: this checkpoint has the head_q/head_k copy head (RWKV_HEAD_QK_DIM > 0); spikelm does not implement it")
    if not is_spikegpt_state_dict(sd):
        raise CheckpointError(f"{where}: not a SpikeGPT checkpoint; {SPIKEGPT_LAYOUT}")


def _resolve_tokenizer(V: int, tokenizer: str | None, near: Path | None) -> str:
    """The config's tokenizer name for vocabulary size V (see the module docstring)."""
    if tokenizer:
        if tokenizer.startswith(CHAR_PREFIX) or tokenizer in ("bytes", "world"):
            return tokenizer
        if tokenizer.endswith(".json") and Path(tokenizer).is_file() and is_char_vocab(tokenizer):
            return CHAR_PREFIX + tokenizer
        return tokenizer
    if V == NEOX_VOCAB_SIZE:
        if near is not None:
            for name in (NEOX_TOKENIZER_FILE, "tokenizer.json"):
                if (near / name).is_file():
                    return str(near / name)
        return NEOX_TOKENIZER_FILE
    if V in (256, 257):
        return "bytes"
    if near is not None and (near / CHAR_VOCAB_FILE).is_file():
        return CHAR_PREFIX + str(near / CHAR_VOCAB_FILE)
    return CHAR_PREFIX + CHAR_VOCAB_FILE


# ----------------------------------------------------------------------------- config + load
def infer_spikegpt_config(sd: dict[str, Any], tokenizer: str | None = None, near: str | os.PathLike[str] | None = None) -> SpikeGPTConfig:
    """Infer V, L, C and the FFN width from a SpikeGPT-layout state dict.

    ``tokenizer``: a name (``bytes``, a tokenizer.json path, ``char:<vocab.json>``) or a path to a
    character ``vocab.json``; None picks one from V (and looks in folder ``near`` for the file).
    What the weights cannot tell is set to the SpikeGPT code's values: ``ctx_len`` 1024, LIF
    ``beta`` 0.5 / threshold 1, ArcTan alpha 2, binary embedding on, and ``token_shift_init``
    ``official`` / ``learnable_shift`` true (the released mixes were trained; these two only matter
    for re-initialisation and fine-tuning).
    """
    _check_supported(sd, "state dict")
    try:
        V, C = sd["emb.weight"].shape
        L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        Fh = sd["blocks.0.ffn.key.weight"].shape[0]
    except KeyError as e:
        raise CheckpointError(f"missing key {e.args[0]}; {SPIKEGPT_LAYOUT}") from None
    except ValueError as e:
        raise CheckpointError(f"unexpected tensor shape ({e}); {SPIKEGPT_LAYOUT}") from None
    if Fh % C:
        raise CheckpointError(f"blocks.0.ffn.key.weight has {Fh} rows, not a multiple of n_embd {C}; {SPIKEGPT_LAYOUT}")
    return SpikeGPTConfig(
        vocab_size=int(V), n_layer=int(L), n_embd=int(C), ffn_mult=int(Fh // C),
        token_shift_init="official", learnable_shift=True,
        tokenizer=_resolve_tokenizer(int(V), tokenizer, Path(near) if near is not None else None),
    )


def spikegpt_from_state_dict(sd: dict[str, Any], tokenizer: str | None = None, source: str | os.PathLike[str] | None = None,
                             dtype: torch.dtype | None = None) -> SpikeGPT:
    """Build a :class:`SpikeGPT` from a released state dict and load it with ``strict=True``.

    ``source``: the file the state dict came from (for messages and to find a tokenizer beside it).
    Tensors are cast to ``dtype`` (default fp32; the releases are often fp16/bf16).
    """
    where = str(source) if source is not None else "state dict"
    _check_supported(sd, where)
    near = None
    if source is not None:
        near = Path(source) if Path(source).is_dir() else Path(source).parent
    cfg = infer_spikegpt_config(sd, tokenizer, near)
    model = SpikeGPT(cfg)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"{where}: keys do not match a SpikeGPT of {cfg.n_layer} layers x {cfg.n_embd} "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}); "
            f"{SPIKEGPT_LAYOUT}"
        )
    target = dtype or torch.float32
    fitted = {}
    for k, t in own.items():
        v = sd[k]
        if tuple(v.shape) != tuple(t.shape):
            # Some exporters store time_decay/time_first as [1, 1, C] or the mixes as [C].
            if ".time_" in k and v.numel() == t.numel():
                v = v.reshape(t.shape)
            else:
                raise CheckpointError(f"{where}: {k} has shape {tuple(v.shape)}, expected {tuple(t.shape)}")
        fitted[k] = v.to(target)
    model.load_state_dict(fitted, strict=True)
    return model.to(target).eval()


def load_spikegpt(path: str | os.PathLike[str], tokenizer: str | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None) -> SpikeGPT:
    """Load a released SpikeGPT ``.pth`` (or ``.safetensors``), or a folder holding exactly one."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.pth")) + sorted(p.glob("*.safetensors"))
        if len(files) != 1:
            raise CheckpointError(f"{p}: expected exactly one .pth or .safetensors file in the folder, found {len(files)}")
        p = files[0]
    sd = read_tensors(p)
    return spikegpt_from_state_dict(sd, tokenizer=tokenizer, source=p, dtype=dtype).to(device)
