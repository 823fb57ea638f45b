"""Reading checkpoint files: weights only, memory-mapped, every failure a named ``CheckpointError``.

``torch.load(..., weights_only=True, mmap=True)``: no pickled code is ever run, and the tensors of
a large file are paged in on demand instead of being read into memory at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..errors import CheckpointError

__all__ = ["read_tensors"]


def read_tensors(path: Path) -> dict[str, Any]:
    """Read a .pth/.bin (weights only) or .safetensors file into a dict, with named errors."""
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or folder")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"{path}: not a readable safetensors file ({e}); the file may be truncated or corrupt") from None
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(b"PK"):  # torch.save writes a zip archive; older files are a pickle (0x80 ...)
        if not head.startswith(b"\x80"):
            raise CheckpointError(f"{path}: cannot read it as a PyTorch weights file: it is neither a zip archive nor a pickle; "
                                  "the file may be corrupt, or of another format (use .safetensors for safetensors files)")
        raise CheckpointError(f"{path}: cannot read it: a legacy (pre-zip) PyTorch file cannot be memory-mapped; "
                              "re-save it with a current torch.save, or convert it to .safetensors")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch raises many types for truncated/corrupt/pickled-code files
        text = str(e)
        if "Weights only load failed" in text:
            raise CheckpointError(f"{path}: refused: it contains pickled Python objects, not just tensors, and spikelm "
                                  "never unpickles code; load only checkpoints of plain tensors (or .safetensors)") from None
        if "central directory" in text or "zip archive" in text:  # torch's miniz wording for a cut-off archive
            msg = "the zip archive is incomplete (the file is probably truncated: copy or download it again)"
        else:
            msg = (text.splitlines()[0] if text else type(e).__name__) + "; the file may be truncated or corrupt"
        raise CheckpointError(f"{path}: cannot read it as a PyTorch weights file: {msg}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict; expected a dict of tensor names to tensors")
    for k, v in obj.items():
        # Metadata keys ("_strategy" of files the rwkv package converted) are named by the format
        # checks; any other entry must be a tensor, or later shape checks would fail unnamed.
        if not isinstance(v, torch.Tensor) and not (isinstance(k, str) and k.startswith("_")):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; "
                                  "expected a dict of tensor names to tensors")
    return obj
