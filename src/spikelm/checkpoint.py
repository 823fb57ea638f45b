"""Checkpoints: official RWKV-6 files, the Hugging Face layout, and spikelm's own folders.

``load(path)`` is the one front door. It recognises

* an official RWKV-6 ``.pth`` (bf16/fp16/fp32; what RWKV-LM saves and BlinkDL releases) or the
  same state dict as ``.safetensors``; the config (L, C, V, H, N, F, Dm, Dd) is inferred from the
  key names and shapes;
* a Hugging Face folder or file (``rwkv.embeddings.weight``, ``rwkv.blocks.{i}.attention.*`` ...),
  mapped to official names through one table, :data:`HF_KEY_MAP`;
* a spikelm folder: ``model.safetensors`` + ``config.json`` (written by :func:`save`).

Files are never unpickled as code: ``torch.load(..., weights_only=True)``. Other RWKV
generations (4, 5, 7) and files already converted by the ``rwkv`` pip package are recognised and
rejected with a message that says what they are.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .config import RWKV6Config
from .errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = ["load", "save", "load_state_dict", "infer_rwkv6_config", "from_hf_keys", "CheckpointError"]

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


def from_hf_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        for pat, rep in HF_KEY_MAP:
            if re.match(pat, k):
                out[re.sub(pat, rep, k)] = v
                break
        else:
            raise CheckpointError(f"unexpected key {k!r} in a Hugging Face RWKV-6 state dict")
    return out


# ---------------------------------------------------------------------------- reading files
def _read_tensors(path: Path) -> dict[str, Any]:
    """Read a .pth/.bin (weights only) or .safetensors file into a dict, with named errors."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e}); the file may be truncated or corrupt") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for truncated/corrupt/pickled-code files
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Weights only load failed" in str(e):
            msg = "it contains pickled Python objects, not just tensors (refused: spikelm never unpickles code)"
        raise CheckpointError(f"{path}: cannot read it as a PyTorch weights file: {msg}; the file may be truncated or corrupt") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict; {EXPECTED_LAYOUT}")
    return obj


def _check_generation(sd: dict[str, Any], path: Path) -> None:
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


def infer_rwkv6_config(sd: dict[str, torch.Tensor], tokenizer: str | None = None) -> RWKV6Config:
    """Infer L, C, V, H, N, F, Dm, Dd from an official-name state dict."""
    try:
        V, C = sd["emb.weight"].shape
        L = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        H, N = sd["blocks.0.att.time_faaaa"].shape
        A = sd["blocks.0.att.receptance.weight"].shape[0]
        Fh = sd["blocks.0.ffn.key.weight"].shape[0]
        Dm = sd["blocks.0.att.time_maa_w1"].shape[1] // 5
        Dd = sd["blocks.0.att.time_decay_w1"].shape[1]
    except KeyError as e:
        raise CheckpointError(f"missing key {e.args[0]}; {EXPECTED_LAYOUT}") from None
    except ValueError as e:
        raise CheckpointError(f"unexpected tensor shape ({e}); {EXPECTED_LAYOUT}") from None
    if tokenizer is None:
        tokenizer = "world" if V == 65536 else "bytes" if V in (256, 257) else "world"
    return RWKV6Config(
        vocab_size=int(V), n_layer=L, n_embd=int(C), head_size=int(N), dim_att=int(A), dim_ffn=int(Fh),
        time_mix_extra_dim=int(Dm), time_decay_extra_dim=int(Dd),
        has_time_state=any(k.endswith("att.time_state") for k in sd), tokenizer=tokenizer,
    )


def _fit_shapes(model: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Check every key and shape, naming the first mismatch (then load with strict=True)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"{path}: keys do not match the inferred {type(model).__name__} "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}); "
            f"{EXPECTED_LAYOUT}"
        )
    out = {}
    for k, t in own.items():
        v = sd[k]
        if v.shape != t.shape:
            if v.numel() == t.numel() and k.endswith(("time_decay", "time_faaaa", "time_state")):
                v = v.reshape(t.shape)  # some exporters squeeze [1,1,C] -> [C]
            else:
                raise CheckpointError(f"{path}: {k} has shape {tuple(v.shape)}, expected {tuple(t.shape)}")
        out[k] = v
    return out


# ---------------------------------------------------------------------------- public API
def load_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read any supported file/folder; return (official-name state dict, metadata)."""
    p = Path(path)
    meta: dict[str, Any] = {"path": str(p)}
    if p.is_dir():
        if (p / "config.json").exists() and (p / "model.safetensors").exists() and json.loads((p / "config.json").read_text()).get("kind"):
            meta["spikelm_config"] = json.loads((p / "config.json").read_text())
            meta["format"] = "spikelm"
            sd = _read_tensors(p / "model.safetensors")
            return sd, meta
        files = sorted(p.glob("*.safetensors")) or sorted(p.glob("pytorch_model*.bin")) or sorted(p.glob("*.pth"))
        if not files:
            raise CheckpointError(f"{p}: folder holds no model.safetensors, pytorch_model*.bin or .pth file")
        sd = {}
        for f in files:
            sd.update(_read_tensors(f))
        if (p / "config.json").exists():
            meta["hf_config"] = json.loads((p / "config.json").read_text())
    else:
        sd = _read_tensors(p)
    if any(k.startswith("rwkv.") for k in sd):
        sd = from_hf_keys(sd)
        meta["format"] = "hf"
    else:
        meta["format"] = "official"
    from .convert.spikegpt_checkpoint import is_spikegpt_state_dict

    if is_spikegpt_state_dict(sd):  # SpikeGPT releases (RWKV-4 layout): built by load() below
        meta["format"] = "spikegpt"
        return sd, meta
    _check_generation(sd, p)
    return sd, meta


def build_model(cfg_dict: dict[str, Any]) -> nn.Module:
    """Instantiate the model class a saved config names."""
    cfg_dict = dict(cfg_dict)
    encoding = cfg_dict.pop("encoding", None)  # present in converted (spiking) checkpoints
    kind = cfg_dict.get("kind", "rwkv6")
    if kind == "rwkv6":
        from .models.rwkv6 import RWKV6

        model = RWKV6(RWKV6Config.from_dict(cfg_dict))
        if encoding is not None:
            from .config import EncodingConfig
            from .convert.to_spiking import attach_encoders

            attach_encoders(model, EncodingConfig.from_dict(encoding))
        return model
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise CheckpointError(f"unknown model kind {kind!r} in config.json; known: rwkv6, {', '.join(_BUILDERS)}")
    return builder(cfg_dict)


# Other model families (SpikeGPT, spiking conversions) register a builder: kind -> callable(cfg dict).
_BUILDERS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {}


def register_builder(kind: str, fn: Callable[[dict[str, Any]], nn.Module]) -> None:
    _BUILDERS[kind] = fn


def _build_spikegpt(cfg_dict: dict[str, Any]) -> nn.Module:
    from .models.spikegpt import build_spikegpt

    return build_spikegpt(cfg_dict)


register_builder("spikegpt", _build_spikegpt)


def _build_rwkv4(cfg_dict: dict[str, Any]) -> nn.Module:
    from .models.rwkv4 import build_rwkv4

    return build_rwkv4(cfg_dict)


register_builder("rwkv4", _build_rwkv4)


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
         tokenizer: str | None = None) -> nn.Module:
    """Load a model from any supported checkpoint. ``dtype`` None keeps fp32 (bf16 files are upcast)."""
    p = Path(path)
    sd, meta = load_state_dict(p)
    if meta["format"] == "spikegpt":
        from .convert.spikegpt_checkpoint import spikegpt_from_state_dict

        model = spikegpt_from_state_dict(sd, tokenizer=tokenizer, source=p, dtype=dtype)
        model.to(device=device)
        log.info("loaded %s (SpikeGPT release layout, %s)", p, model.cfg)
        return model
    if meta["format"] == "spikelm":
        cfg = dict(meta["spikelm_config"])
        if tokenizer:
            cfg["tokenizer"] = tokenizer
        model = build_model(cfg)
    else:
        cfg_obj = infer_rwkv6_config(sd, tokenizer)
        from .models.rwkv6 import RWKV6

        model = RWKV6(cfg_obj)
    sd = _fit_shapes(model, sd, p)
    target = dtype or torch.float32
    sd = {k: v.to(target) if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True)
    model.to(device=device, dtype=target)
    model.eval()
    log.info("loaded %s (%s layout, %s)", p, meta["format"], getattr(model, "cfg", None))
    return model


def save(model: nn.Module, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``out_dir`` atomically (temp dir, rename)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg.to_dict() if hasattr(model, "cfg") else {}
    if getattr(model, "encoding", None) is not None:  # a converted (spiking) model
        cfg["encoding"] = model.encoding.to_dict()
    if extra:
        cfg.update(extra)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(sd, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            import shutil

            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_official(model: nn.Module, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Write the state dict in the official RWKV-6 ``.pth`` layout (what RWKV-LM saves)."""
    p = Path(path)
    sd = {k: v.detach().to(dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    torch.save(sd, str(tmp))
    os.replace(tmp, p)
    return p


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------- CLI
def cli_info(path: str, json_: bool = False) -> int:
    """Print the layout, inferred configuration and parameter count of a checkpoint.

    Args:
        path: an official RWKV-6 .pth/.safetensors file, a Hugging Face folder, or a spikelm folder.
        json_: print a JSON object instead of text.
    """
    sd, meta = load_state_dict(path)
    if meta["format"] == "spikelm":
        cfg = meta["spikelm_config"]
    elif meta["format"] == "spikegpt":
        from .convert.spikegpt_checkpoint import infer_spikegpt_config

        cfg = infer_spikegpt_config(sd, near=Path(path).parent).to_dict()
    else:
        cfg = infer_rwkv6_config(sd).to_dict()
    total = sum(v.numel() for v in sd.values() if hasattr(v, "numel"))
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values() if hasattr(v, "dtype")})
    info = {"path": str(path), "format": meta["format"], "config": cfg, "parameters": total, "dtypes": dtypes, "tensors": len(sd)}
    if json_:
        print(json.dumps(info, indent=2))
    else:
        print(f"{path}: {meta['format']} layout, {len(sd)} tensors ({', '.join(dtypes)}), {total:,} parameters")
        for k, v in cfg.items():
            print(f"  {k:22s} {v}")
    return 0


def cli_init(out: str, n_layer: int = 6, n_embd: int = 256, vocab_size: int = 257, head_size: int = 64,
             tokenizer: str = "bytes", seed: int = 0, official: bool = False) -> int:
    """Write a randomly initialised RWKV-6 (for tests, benchmarks, or training from scratch).

    Args:
        out: output folder (spikelm layout), or a .pth path with --official.
        n_layer: number of blocks.
        n_embd: model width C.
        vocab_size: vocabulary size V (257 for bytes, 65536 for the World tokenizer).
        head_size: head size N (64 in released models).
        tokenizer: tokenizer name stored in the config: bytes, world, or a tokenizer.json path.
        seed: random seed of the initialisation.
        official: write an official-layout .pth file instead of a spikelm folder.
    """
    from .models.rwkv6 import RWKV6

    cfg = RWKV6Config(n_layer=n_layer, n_embd=n_embd, vocab_size=vocab_size, head_size=head_size, tokenizer=tokenizer)
    model = RWKV6(cfg).init_weights(seed)
    path = save_official(model, out) if official else save(model, out)
    print(f"wrote {path} ({n_params(model):,} parameters)")
    return 0
