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
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "Weights only load failed" in str(e):
            msg = "it contains pickled Python objects, not just tensors (refused: spikelm never unpickles code)"
        raise CheckpointError(f"{path}: cannot read it as a PyTorch weights file: {msg}; the file may be truncated or corrupt") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict; expected a dict of tensor names to tensors")
    return obj
