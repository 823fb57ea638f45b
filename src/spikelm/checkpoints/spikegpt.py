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

**The public run code's behaviour** (``src/model_run.py``, which the repository's ``run.py`` uses
with the released models) differs from the training model in two ways that change the output; the
loader reproduces it by default and each can be overridden (``binary_embedding=`` /
``rescale_every=`` of :func:`infer_spikegpt_config`, :func:`spikegpt_from_state_dict`,
:func:`load_spikegpt`):

* Binary embedding. The run code applies the Heaviside to the embedding only when
  ``vocab_size == 77`` (``if self.args.vocab_size == 77``: the enwik8 character model); for
  every other vocabulary -- the released 216M OpenWebText model (NeoX, 50277) included -- block 0
  receives the real-valued embedding. ``binary_embedding=None`` follows that rule, ``"on"`` /
  ``True`` and ``"off"`` / ``False`` force it. (Its training code, ``src/model.py``, always
  binarises; models spikelm trains record ``binary_embedding`` in their ``config.json``, default
  true, and keep it: this rule is applied to release-layout files only.)
* Layer rescaling. ``RWKV_RESCALE_LAYER = 6``: the LIF inputs of block i are scaled by
  ``2^-(i // 6)`` and the residual stream is halved after every 6th block (see
  :class:`~spikelm.models.spikegpt.Block`). ``rescale_every=None`` gives 6 (the run code), ``0``
  the training model's computation. It only matters for models of more than 6 blocks.

Both are checked against the run code itself by ``tests/models/test_spikegpt_oracle.py`` (fixture
written by ``tests/models/oracle/make_spikegpt_fixture.py``).

**RWKV-4 or SpikeGPT?** The weights cannot tell (see above). ``is_spikegpt_state_dict`` is true
for both, and spikelm's default for this layout stays SpikeGPT. A caller that knows it holds a
plain RWKV-4 (e.g. a BlinkDL ``RWKV-4-Pile-*.pth``) says so explicitly -- a ``family="rwkv4"``
argument of the front-door loader, or :func:`spikelm.checkpoints.rwkv4.rwkv4_from_state_dict`
directly -- rather than by a guess from names or statistics.

Not supported (rejected with a message): the code's ``RWKV-ffnPre`` variant (``blocks.0.ffnPre``,
no time mixing in block 0) and ``RWKV_HEAD_QK_DIM > 0`` (``head_q`` / ``head_k``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..data.charvocab import CHAR_PREFIX, CHAR_VOCAB_FILE, is_char_vocab
from ..errors import CheckpointError
from ..models.spikegpt import SpikeGPT, SpikeGPTConfig
from .files import read_tensors
from .rwkv4 import NEOX_VOCAB_SIZE, RWKV4_LAYOUT, is_rwkv4_state_dict, load_rwkv4_layout, rwkv4_layout_dims

__all__ = [
    "SPIKEGPT_LAYOUT",
    "NEOX_VOCAB_SIZE",
    "is_spikegpt_state_dict",
    "infer_spikegpt_config",
    "official_binary_embedding",
    "spikegpt_from_state_dict",
    "load_spikegpt",
]

SPIKEGPT_LAYOUT = RWKV4_LAYOUT
NEOX_TOKENIZER_FILE = "20B_tokenizer.json"
# The public run code (src/model_run.py): `if self.args.vocab_size == 77:` binarises the embedding;
# RWKV_RESCALE_LAYER = 6.
RUN_CODE_BINARY_VOCAB = 77
RUN_CODE_RESCALE_EVERY = 6
_ON, _OFF = ("on", "true", "yes", "1"), ("off", "false", "no", "0")


def official_binary_embedding(vocab_size: int) -> bool:
    """The public run code's rule: binary embedding for the 77-character vocabulary only."""
    return vocab_size == RUN_CODE_BINARY_VOCAB


def _binary_embedding_setting(value: bool | str | None, vocab_size: int) -> bool:
    """``None`` -> the run code's rule; ``"on"``/``True`` or ``"off"``/``False`` -> forced."""
    if value is None:
        return official_binary_embedding(vocab_size)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _ON + _OFF:
        return value.strip().lower() in _ON
    raise CheckpointError(f"binary_embedding must be 'on', 'off' or None (the public run code's rule), got {value!r}")


# ----------------------------------------------------------------------------- layout
# SpikeGPT's files are the RWKV-4 layout: recognised and read by spikelm.checkpoints.rwkv4.
is_spikegpt_state_dict = is_rwkv4_state_dict


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
def infer_spikegpt_config(sd: dict[str, Any], tokenizer: str | None = None, near: str | os.PathLike[str] | None = None,
                          binary_embedding: bool | str | None = None, rescale_every: int | None = None) -> SpikeGPTConfig:
    """Infer V, L, C and the FFN width from a SpikeGPT-layout state dict.

    ``tokenizer``: a name (``bytes``, a tokenizer.json path, ``char:<vocab.json>``) or a path to a
    character ``vocab.json``; None picks one from V (and looks in folder ``near`` for the file).
    What the weights cannot tell is set to the SpikeGPT code's values: ``ctx_len`` 1024, LIF
    ``beta`` 0.5 / threshold 1, ArcTan alpha 2, ``token_shift_init`` ``official`` /
    ``learnable_shift`` true (the released mixes were trained; these two only matter for
    re-initialisation and fine-tuning), and the public run code's binary-embedding rule and layer
    rescaling (module docstring): ``binary_embedding`` None = on iff V == 77, ``"on"``/``"off"``
    forces it; ``rescale_every`` None = 6, 0 = off.
    """
    V, L, C, _, Fh = rwkv4_layout_dims(sd)
    if Fh % C:
        raise CheckpointError(f"blocks.0.ffn.key.weight has {Fh} rows, not a multiple of n_embd {C}; {SPIKEGPT_LAYOUT}")
    return SpikeGPTConfig(
        vocab_size=V, n_layer=L, n_embd=C, ffn_mult=Fh // C,
        token_shift_init="official", learnable_shift=True,
        binary_embedding=_binary_embedding_setting(binary_embedding, V),
        rescale_every=RUN_CODE_RESCALE_EVERY if rescale_every is None else int(rescale_every),
        tokenizer=_resolve_tokenizer(V, tokenizer, Path(near) if near is not None else None),
    )


def spikegpt_from_state_dict(sd: dict[str, Any], tokenizer: str | None = None, source: str | os.PathLike[str] | None = None,
                             dtype: torch.dtype | None = None, binary_embedding: bool | str | None = None,
                             rescale_every: int | None = None, device: str | torch.device = "cpu") -> SpikeGPT:
    """Build a :class:`SpikeGPT` from a released state dict and load it with ``strict=True``.

    ``source``: the file the state dict came from (for messages and to find a tokenizer beside it).
    Tensors are cast to ``dtype`` (default fp32; the releases are often fp16/bf16).
    ``binary_embedding`` / ``rescale_every``: None reproduces the public run code (binary embedding
    for the 77-character vocabulary only; rescaling every 6 blocks); see the module docstring.
    """
    where = str(source) if source is not None else "state dict"
    rwkv4_layout_dims(sd, where)  # refuses the variants spikelm does not implement, naming the file
    near = None
    if source is not None:
        near = Path(source) if Path(source).is_dir() else Path(source).parent
    cfg = infer_spikegpt_config(sd, tokenizer, near, binary_embedding=binary_embedding, rescale_every=rescale_every)
    return load_rwkv4_layout(sd, lambda: SpikeGPT(cfg), where, dtype, device)


def load_spikegpt(path: str | os.PathLike[str], tokenizer: str | None = None, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None, binary_embedding: bool | str | None = None,
                  rescale_every: int | None = None) -> SpikeGPT:
    """Load a released SpikeGPT ``.pth`` (or ``.safetensors``), or a folder holding exactly one.

    By default the model computes what the public run code computes on this file (binary embedding
    only for the 77-character vocabulary, layer rescaling every 6 blocks); ``binary_embedding=``
    ``"on"``/``"off"`` and ``rescale_every=0`` select the training model's computation instead.
    """
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.pth")) + sorted(p.glob("*.safetensors"))
        if len(files) != 1:
            raise CheckpointError(f"{p}: expected exactly one .pth or .safetensors file in the folder, found {len(files)}")
        p = files[0]
    sd = read_tensors(p)
    return spikegpt_from_state_dict(sd, tokenizer=tokenizer, source=p, dtype=dtype, binary_embedding=binary_embedding,
                                    rescale_every=rescale_every).to(device)
