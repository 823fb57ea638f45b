"""Loading and saving models: the one front door, :func:`load`, and spikelm's own folders.

:func:`load` recognises

* an official RWKV-6 ``.pth`` / ``.safetensors`` or a Hugging Face RWKV-6 folder (:mod:`.rwkv6`);
* a SpikeGPT release ``.pth`` (RWKV-4 layout, :mod:`.spikegpt`);
* a spikelm folder: ``model.safetensors`` + ``config.json`` (written by :func:`save`), including
  converted (spiking) models, whose encoders are attached before the calibrated scales load;
  a sharded training checkpoint (``config.json`` + ``torch.distributed.checkpoint`` files, what
  ``distributed: fsdp`` saves) is read whole, in one process.

Files are never unpickled as code (:mod:`.files`). Other RWKV generations and files already
converted by the ``rwkv`` pip package are recognised and rejected with a message that says what
they are.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import EncodingConfig, RWKV4Config, RWKV6Config, RWKV7Config, WeightQuantConfig
from ..convert import attach_encoders
from ..errors import CheckpointError, ConfigError
from ..io import atomic_write, atomic_write_json, claim_dir, honour_umask, make_temp_dir, publish_dir
from ..models.quantized import dequantized_state_dict, quantize_weights, weight_quantization
from ..models.rwkv4 import RWKV4
from ..models.rwkv6 import RWKV6
from ..models.rwkv7 import RWKV7
from ..models.spikegpt import SpikeGPT, SpikeGPTConfig
from .files import SHARDED_METADATA, assign_weights, read_sharded_model, read_tensors, write_safetensors
from .rwkv4 import rwkv4_from_state_dict
from .rwkv6 import EXPECTED_LAYOUT, check_generation, from_hf_keys, infer_rwkv6_config
from .rwkv7 import from_official, infer_rwkv7_config, is_rwkv7_state_dict, rwkv7_from_state_dict
from .spikegpt import SPIKEGPT_LAYOUT, infer_spikegpt_config, is_spikegpt_state_dict, spikegpt_from_state_dict

log = logging.getLogger(__name__)

__all__ = ["load", "save", "save_official", "load_state_dict", "build_model", "describe", "n_params", "model_config"]

MODEL_FILES = ("model.safetensors", "config.json")


def _fit_shapes(model: nn.Module, sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """Check every key and shape, naming the first mismatch (then load with strict=True)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    extra = sorted(set(sd) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"{path}: keys do not match the inferred {type(model).__name__} "
            f"(missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}); "
            f"{SPIKEGPT_LAYOUT if isinstance(model, SpikeGPT) else EXPECTED_LAYOUT}"
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


def _read_config(path: Path) -> dict[str, Any]:
    """A folder's config.json as a dict, every failure a named ``CheckpointError``."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); the file may be truncated or corrupt") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(cfg).__name__}, not an object of configuration keys")
    return cfg


def load_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read any supported file/folder; return (official-name state dict, metadata)."""
    p = Path(path)
    meta: dict[str, Any] = {"path": str(p)}
    if p.is_dir():
        config = _read_config(p / "config.json") if (p / "config.json").exists() else {}
        if config.get("kind") and (p / "model.safetensors").exists():
            meta["spikelm_config"] = config
            meta["format"] = "spikelm"
            sd = read_tensors(p / "model.safetensors")
            return sd, meta
        if config.get("kind") and (p / SHARDED_METADATA).exists():  # a sharded training checkpoint (FSDP)
            meta["spikelm_config"] = config
            meta["format"] = "spikelm"
            return read_sharded_model(p), meta
        files = sorted(p.glob("*.safetensors")) or sorted(p.glob("pytorch_model*.bin")) or sorted(p.glob("*.pth"))
        if not files:
            raise CheckpointError(f"{p}: folder holds no model.safetensors, pytorch_model*.bin or .pth file")
        sd = {}
        for f in files:
            sd.update(read_tensors(f))
        if config:
            meta["hf_config"] = config
    else:
        sd = read_tensors(p)
    if any(k.startswith("rwkv.") for k in sd):
        sd = from_hf_keys(sd, source=p)
        meta["format"] = "hf"
    else:
        meta["format"] = "official"
    if is_spikegpt_state_dict(sd):  # SpikeGPT releases (RWKV-4 layout): built by load() below
        meta["format"] = "spikegpt"
        return sd, meta
    if is_rwkv7_state_dict(sd):  # official RWKV-7 (x070): built by load() below
        meta["format"] = "rwkv7"
        return sd, meta
    check_generation(sd, p)
    return sd, meta


def build_model(cfg_dict: dict[str, Any]) -> nn.Module:
    """Instantiate the model a saved ``config.json`` names (``kind``), with its encoders if converted."""
    cfg_dict = dict(cfg_dict)
    encoding = cfg_dict.pop("encoding", None)  # present in converted (spiking) checkpoints
    wq = cfg_dict.pop("weight_quantization", None)  # present where the weights are stored at 8 or 16 bits
    cfg_dict.pop("finetune", None)  # how a fine-tuned model was made (spikelm finetune): a record, not a setting
    kind = cfg_dict.get("kind", "rwkv6")
    if kind == "rwkv6":
        model: nn.Module = RWKV6(RWKV6Config.from_dict(cfg_dict))
    elif kind == "spikegpt":
        model = SpikeGPT(SpikeGPTConfig.from_dict(cfg_dict))
    elif kind == "rwkv7":
        model = RWKV7(RWKV7Config.from_dict(cfg_dict))
    elif kind == "rwkv4":
        model = RWKV4(RWKV4Config.from_dict(cfg_dict))
    else:
        raise ConfigError(f"kind: unknown model kind {kind!r}; known: rwkv4, rwkv6, rwkv7, spikegpt")
    if encoding is not None:
        attach_encoders(model, EncodingConfig.from_dict(encoding))
    if wq is not None:  # the quantised matrices' places (q, scale) before the stored values are assigned
        w = WeightQuantConfig.from_dict(wq)
        quantize_weights(model, w.bits, head=w.head, embedding=w.embedding)
    return model


def _build_named(cfg: dict[str, Any], source: Path) -> nn.Module:
    """:func:`build_model`, with a configuration error naming the file it came from."""
    try:
        return build_model(cfg)
    except (ConfigError, CheckpointError) as e:  # an invalid key or value, an unknown kind
        raise CheckpointError(f"{source}: {e}") from None


FAMILIES = ("spikegpt", "rwkv4")


def load(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
         tokenizer: str | None = None, binary_embedding: bool | str | None = None, rescale_every: int | None = None,
         family: str | None = None) -> nn.Module:
    """Load a model from any supported checkpoint. ``dtype`` None keeps fp32 (bf16 files are upcast).

    A file in the RWKV-4 layout is a SpikeGPT release unless ``family="rwkv4"`` (BlinkDL's RWKV-4
    releases have the same keys: loaded as the :class:`RWKV4` ANN). ``family`` None / ``"auto"``
    detects; a family that does not match the file is a ``CheckpointError``.
    ``binary_embedding`` (None, "on"/"off" or a bool) and ``rescale_every`` (None or an int) apply
    to SpikeGPT only: None follows the public run code's rule for a release file (binary embedding
    for the 77-character vocabulary only, rescaling every 6 blocks; see
    :mod:`spikelm.checkpoints.spikegpt`) and the recorded setting for a spikelm folder; a value
    overrides either.

    Memory-lean: the model is built on the meta device and each tensor of the (memory-mapped) file
    is cast and assigned one at a time (:func:`.files.assign_weights`), so no second copy of the
    model exists at any point; a converted model's spike scales stay float32.
    """
    p = Path(path)
    family = None if family in (None, "auto") else family
    if family is not None and family not in FAMILIES:
        raise CheckpointError(f"family must be auto, {' or '.join(FAMILIES)}; got {family!r}")
    sd, meta = load_state_dict(p)
    kind = {"spikegpt": family or "spikegpt", "rwkv7": "rwkv7", "spikelm": meta.get("spikelm_config", {}).get("kind", "rwkv6")}.get(
        meta["format"], "rwkv6")
    if family is not None and kind != family:
        raise CheckpointError(f"{p}: --family {family} does not match this {kind} checkpoint; use --family auto")
    if kind != "spikegpt" and (binary_embedding is not None or rescale_every is not None):
        raise CheckpointError(f"{p}: --binary-embedding / rescale_every apply to SpikeGPT only, this is {kind}; leave them at auto")
    if meta["format"] == "spikegpt" and kind == "rwkv4":
        model = rwkv4_from_state_dict(sd, tokenizer=tokenizer, source=str(p), dtype=dtype, device=device).eval()
        log.info("loaded %s (RWKV-4 layout as the RWKV-4 ANN, %s)", p, model.cfg)
        return model
    if meta["format"] == "spikegpt":
        model = spikegpt_from_state_dict(sd, tokenizer=tokenizer, source=p, dtype=dtype, device=device,
                                         binary_embedding=binary_embedding, rescale_every=rescale_every)
        log.info("loaded %s (SpikeGPT release layout, %s)", p, model.cfg)
        return model
    if meta["format"] == "rwkv7":
        model = rwkv7_from_state_dict(sd, tokenizer=tokenizer, dtype=dtype or torch.float32, device=device)
        log.info("loaded %s (RWKV-7 official layout, %s)", p, model.cfg)
        return model
    if meta["format"] == "spikelm":
        cfg = dict(meta["spikelm_config"])
        if tokenizer:
            cfg["tokenizer"] = tokenizer
        if binary_embedding is not None:  # an explicit override of the recorded setting (SpikeGPT only)
            if binary_embedding not in (True, False, "on", "off"):
                raise CheckpointError(f"binary_embedding must be 'on', 'off' or None, got {binary_embedding!r}")
            cfg["binary_embedding"] = binary_embedding in (True, "on")
        if rescale_every is not None:
            cfg["rescale_every"] = rescale_every
    else:
        cfg = dict(infer_rwkv6_config(sd, tokenizer, source=p).to_dict(), kind="rwkv6")
    with torch.device("meta"):
        skeleton = _build_named(cfg, p / "config.json" if meta["format"] == "spikelm" else p)
    sd = _fit_shapes(skeleton, sd, p)
    del skeleton
    model = assign_weights(lambda: build_model(cfg), sd, dtype=dtype, device=device, where=str(p))
    log.info("loaded %s (%s layout, %s)", p, meta["format"], getattr(model, "cfg", None))
    return model


def model_config(model: nn.Module) -> dict[str, Any]:
    """What ``config.json`` records of ``model``: its config, its encoding if converted, and how its
    weights are stored if quantised."""
    cfg = model.cfg.to_dict() if hasattr(model, "cfg") else {}
    if getattr(model, "encoding", None) is not None:  # a converted (spiking) model
        cfg["encoding"] = model.encoding.to_dict()
    if weight_quantization(model) is not None:  # int8 (or fp16) weights, stored as they are
        cfg["weight_quantization"] = weight_quantization(model).to_dict()
    return cfg


def save(model: nn.Module, out_dir: str | os.PathLike, extra: dict[str, Any] | None = None,
         overwrite: bool = True) -> Path:
    """Write ``model.safetensors`` + ``config.json`` into ``out_dir`` atomically (temp folder, rename).

    An existing ``out_dir`` is replaced only when ``overwrite`` is True and it holds nothing but
    spikelm's own files (:func:`spikelm.io.claim_dir`); a user's folder is never deleted.
    """
    out = claim_dir(out_dir, overwrite=overwrite)
    cfg = model_config(model)
    if extra:
        cfg.update(extra)
    tmp = make_temp_dir(out)
    try:
        sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        write_safetensors(sd, tmp / "model.safetensors")
        honour_umask(tmp / "model.safetensors")
        atomic_write_json(tmp / "config.json", cfg)
        publish_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_official(model: nn.Module, path: str | os.PathLike, dtype: torch.dtype = torch.float32) -> Path:
    """Write the state dict in the official RWKV-6 ``.pth`` layout (what RWKV-LM saves); quantised
    weights are written dequantised, under their official names."""
    p = Path(path)
    sd = {k: v.detach().contiguous().cpu() for k, v in dequantized_state_dict(model, dtype).items()}
    buf = io.BytesIO()
    torch.save(sd, buf)
    return atomic_write(p, buf.getbuffer())


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """Layout, inferred configuration, parameter count and dtypes of a checkpoint, as a dict.

    The shapes are checked against the inferred model as :func:`load` checks them (a file with a
    wrong shape is a ``CheckpointError`` here too), without building the weights.
    """
    sd, meta = load_state_dict(path)
    if meta["format"] == "spikelm":
        cfg = meta["spikelm_config"]
    elif meta["format"] == "spikegpt":
        cfg = infer_spikegpt_config(sd, near=Path(path).parent).to_dict()
    elif meta["format"] == "rwkv7":
        cfg = infer_rwkv7_config(sd).to_dict()
    else:
        cfg = infer_rwkv6_config(sd, source=path).to_dict()
    if meta["format"] == "rwkv7":
        sd_check = from_official(dict(sd))
        cfg_build = dict(cfg, kind="rwkv7")
    else:
        sd_check, cfg_build = sd, dict(cfg, kind={"spikegpt": "spikegpt", "official": "rwkv6", "hf": "rwkv6"}.get(meta["format"], cfg.get("kind", "rwkv6")))
    with torch.device("meta"):
        skeleton = _build_named(cfg_build, Path(path) / "config.json" if meta["format"] == "spikelm" else Path(path))
    _fit_shapes(skeleton, sd_check, Path(path))
    total = sum(v.numel() for v in sd.values() if hasattr(v, "numel"))
    dtypes = sorted({str(v.dtype).replace("torch.", "") for v in sd.values() if hasattr(v, "dtype")})
    return {"path": str(path), "format": meta["format"], "config": cfg, "parameters": total, "dtypes": dtypes,
            "tensors": len(sd)}
