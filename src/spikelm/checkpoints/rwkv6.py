"""The RWKV-6 (x060) checkpoint format: official keys, the Hugging Face layout, config inference.

An official RWKV-6 ``.pth`` (bf16/fp16/fp32; what RWKV-LM saves and BlinkDL releases) or the same
state dict as ``.safetensors``: the config (L, C, V, H, N, F, Dm, Dd) is inferred from the key
names and shapes. A Hugging Face folder (``rwkv.embeddings.weight``,
``rwkv.blocks.{i}.attention.*`` ...) is mapped to official names through one table,
:data:`HF_KEY_MAP`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from ..config import RWKV6Config
from ..errors import CheckpointError

__all__ = ["EXPECTED_LAYOUT", "HF_KEY_MAP", "from_hf_keys", "check_generation", "infer_rwkv6_config"]

EXPECTED_LAYOUT = (
    "expected an RWKV-6 (x060) state dict: emb.weight, blocks.{i}.ln1/ln2, blocks.{i}.att.time_maa_*, "
    "blocks.{i}.att.time_faaaa, blocks.{i}.ffn.*, ln_out, head.weight"
)

# Hugging Face (RWKV/v6-Finch-*-HF) prefixes -> official names; applied in order, first match wins.
HF_KEY_MAP: list[tuple[str, str]] = [
    (r"^rwkv\.embeddings\.", "emb."),
    (r"^rwkv\.blocks\.(\d+)\.pre_ln\.", r"blocks.\1.ln0."),
    (r"^rwkv\.blocks\.(\d+)\.attention\.", r"blocks.\1.att."),
    (r"^rwkv\.blocks\.(\d+)\.feed_forward\.", r"blocks.\1.ffn."),
    (r"^rwkv\.blocks\.(\d+)\.(ln1|ln2)\.", r"blocks.\1.\2."),
    (r"^rwkv\.ln_out\.", "ln_out."),
    (r"^head\.", "head."),
]


def from_hf_keys(sd: dict[str, torch.Tensor], source: str | Path = "") -> dict[str, torch.Tensor]:
    """Map Hugging Face key names to official ones; ``source`` names the file in errors."""
    where = f"{source}: " if source else ""
    out = {}
    for k, v in sd.items():
        for pat, rep in HF_KEY_MAP:
            if re.match(pat, k):
                out[re.sub(pat, rep, k)] = v
                break
        else:
            raise CheckpointError(f"{where}unexpected key {k!r} in a Hugging Face RWKV-6 state dict; "
                                  "expected rwkv.embeddings.*, rwkv.blocks.{i}.*, rwkv.ln_out.* and head.*")
    return out


def check_generation(sd: dict[str, Any], path: Path) -> None:
    """Reject files that are not plain RWKV-6 state dicts, naming what they are."""
    if "_strategy" in sd or "_version" in sd:
        raise CheckpointError(
            f"{path}: this file was converted by the `rwkv` pip package (strategy {sd.get('_strategy')!r}); "
            "its weights are transposed and re-typed. Load the original .pth released by BlinkDL instead"
        )
    keys = set(sd)
    if any(k.startswith("model.layers.") or k.startswith("transformer.") for k in keys):
        raise CheckpointError(f"{path}: this is not an RWKV checkpoint (transformer keys); {EXPECTED_LAYOUT}")
    if any(".att.w0" in k or ".att.a0" in k or ".att.x_r" in k for k in keys):
        raise CheckpointError(f"{path}: this is an RWKV-7 (x070) checkpoint; spikelm implements RWKV-6 (x060)")
    if "emb.weight" not in keys:
        raise CheckpointError(f"{path}: no emb.weight key; {EXPECTED_LAYOUT}")
    if not any(".att.time_maa_x" in k or ".att.time_maa_w1" in k for k in keys):
        if any(".att.time_first" in k for k in keys) and not any(".att.ln_x" in k for k in keys):
            raise CheckpointError(
                f"{path}: this is an RWKV-4 checkpoint (time_first, no ln_x); for SpikeGPT-layout files use "
                "spikelm's SpikeGPT loader, for RWKV-6 use an x060 file"
            )
        if any(".att.ln_x" in k for k in keys):
            raise CheckpointError(f"{path}: this is an RWKV-5 checkpoint (ln_x but no time_maa_*); spikelm implements RWKV-6 (x060)")
        raise CheckpointError(f"{path}: no blocks.*.att.time_maa_* keys; {EXPECTED_LAYOUT}")


def infer_rwkv6_config(sd: dict[str, torch.Tensor], tokenizer: str | None = None, source: str | Path = "") -> RWKV6Config:
    """Infer L, C, V, H, N, F, Dm, Dd from an official-name state dict; ``source`` names the file in errors."""
    where = f"{source}: " if source else ""
    try:
        V, C = sd["emb.weight"].shape
        L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        H, N = sd["blocks.0.att.time_faaaa"].shape
        A = sd["blocks.0.att.receptance.weight"].shape[0]
        Fh = sd["blocks.0.ffn.key.weight"].shape[0]
        Dm = sd["blocks.0.att.time_maa_w1"].shape[1] // 5
        Dd = sd["blocks.0.att.time_decay_w1"].shape[1]
    except KeyError as e:
        raise CheckpointError(f"{where}missing key {e.args[0]}; {EXPECTED_LAYOUT}") from None
    except (ValueError, IndexError) as e:  # a tensor of the wrong rank: unpacking or indexing its shape fails
        raise CheckpointError(f"{where}a tensor has an unexpected number of dimensions ({e}); {EXPECTED_LAYOUT}") from None
    if tokenizer is None:
        tokenizer = "world" if V == 65536 else "bytes" if V in (256, 257) else "world"
    return RWKV6Config(
        vocab_size=int(V), n_layer=L, n_embd=int(C), head_size=int(N), dim_att=int(A), dim_ffn=int(Fh),
        time_mix_extra_dim=int(Dm), time_decay_extra_dim=int(Dd),
        has_time_state=any(k.endswith("att.time_state") for k in sd), tokenizer=tokenizer,
    )
