"""Reading checkpoint files: weights only, memory-mapped, every failure a named ``CheckpointError``;
writing them so that a full disk is an ``OSError`` naming the file.

``torch.load(..., weights_only=True, mmap=True)``: no pickled code is ever run, and the tensors of
a large file are paged in on demand instead of being read into memory at once.

:func:`assign_weights` is the one way a loader turns such a state dict into a model without a
second copy: the model is built on the meta device (no storage), and each tensor of the file is
cast to the dtype the model wants for it, moved, and *assigned* (``load_state_dict(assign=True)``)
one at a time, popped from the source dict as it goes. A tensor whose file dtype already matches
is used as it is (on the CPU it stays memory-mapped), so the peak is the model in its dtype plus
one tensor.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import pickle
import re
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError

__all__ = ["read_tensors", "read_state", "write_torch", "write_safetensors", "assign_weights", "read_sharded_model",
           "SHARDED_METADATA"]

# The index file of a torch.distributed.checkpoint folder (what FSDP training checkpoints hold).
SHARDED_METADATA = ".metadata"


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
        raise _unreadable(path, e, "a PyTorch weights file") from None
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


def _unreadable(path: Path, e: BaseException, what: str) -> CheckpointError:
    """The named error of a ``torch.load(weights_only=True)`` that failed on ``path``."""
    text = str(e)
    if "Weights only load failed" in text or isinstance(e, pickle.UnpicklingError):
        return CheckpointError(f"{path}: refused: it contains pickled Python objects, not just tensors, and spikelm "
                               "never unpickles code; load only checkpoints of plain tensors (or .safetensors)")
    if "central directory" in text or "zip archive" in text:  # torch's miniz wording for a cut-off archive
        msg = "the zip archive is incomplete (the file is probably truncated: copy or download it again)"
    else:
        msg = (text.splitlines()[0] if text else type(e).__name__) + "; the file may be truncated or corrupt"
    return CheckpointError(f"{path}: cannot read it as {what}: {msg}")


def read_state(path: Path, map_location: str | torch.device = "cpu") -> Any:
    """A training-state file (``optimizer.pt``, ``rng_rank0.pt``) read weights-only: a pickle that
    would run code, a truncated or a missing file is a :class:`CheckpointError` naming the file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file; the checkpoint is incomplete")
    try:
        return torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 (torch raises many types for corrupt or pickled-code files)
        raise _unreadable(path, e, "a training-state file") from None


def write_torch(obj: Any, path: Path) -> Path:
    """``torch.save`` through a Python file object, so that a full disk or a read-only target is an
    ``OSError`` naming the file (torch's own writer says only "unexpected pos"); a partial file is removed."""
    try:
        with open(path, "wb") as f:
            torch.save(obj, f)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def write_safetensors(sd: dict[str, torch.Tensor], path: Path) -> Path:
    """``safetensors.torch.save_file``, with an I/O failure (a full disk) raised as the ``OSError``
    it is, naming the file; a partial file is removed."""
    try:
        save_file(sd, str(path))
    except SafetensorError as e:
        path.unlink(missing_ok=True)
        code = re.search(r"os error (\d+)", str(e))
        if code:
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
        raise
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def read_sharded_model(folder: Path) -> dict[str, torch.Tensor]:
    """The whole model of a sharded training checkpoint (``torch.distributed.checkpoint``, saved
    as ``{"model": ..., "optimizer": ...}`` by ``distributed: fsdp``), read in this one process."""
    try:  # torch's own reader of a whole DCP checkpoint without a process group (what dcp_to_torch_save uses)
        from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys
    except ImportError:
        raise CheckpointError(f"{folder}: a sharded training checkpoint, which this torch {torch.__version__} cannot read "
                              "in one process; load the run's final/ folder, or resume training from it") from None
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            sd = _load_state_dict_from_keys(keys={"model"}, checkpoint_id=str(folder)).get("model")
    except Exception as e:  # DCP raises CheckpointException and others for missing or cut-off shards
        raise CheckpointError(f"{folder}: cannot read the sharded checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); a shard file may be missing or truncated") from None
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{folder}: the sharded checkpoint holds no model weights")
    return {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def assign_weights(build: Callable[[], nn.Module], sd: dict[str, Any], dtype: torch.dtype | None = None,
                   device: str | torch.device = "cpu", where: str = "state dict") -> nn.Module:
    """Build the model ``build()`` makes on the meta device and fill it from ``sd`` (consumed).

    ``sd`` must hold exactly the model's keys with its shapes (the caller checks and reshapes). The
    dtype of each tensor is the one the skeleton has after ``.to(dtype)``: floating weights take
    ``dtype`` (None: fp32), while modules that keep a float32 value whatever the model's dtype (the
    spike encoders' scales, :class:`spikelm.spiking.layers.SpikeEncoder`) keep it. Integer tensors
    keep theirs. Returns the model in eval mode.
    """
    target = dtype or torch.float32
    release = _PageRelease()
    with torch.device("meta"):
        model = build()
    model.to(dtype=target)  # on meta: free; tells which tensors keep float32
    own = model.state_dict(keep_vars=True)
    # weights the model keeps (C, V)-major as float32 on a CPU (RWKV-6's head: RWKV6.lay_out_head)
    transposed = set(getattr(model, "CPU_FP32_TRANSPOSED", ()))
    fitted: dict[str, torch.Tensor] = {}
    for k in list(sd):
        v = sd.pop(k)
        ref = own.get(k)
        want = ref.dtype if (ref is not None and v.is_floating_point()) else v.dtype
        if k in transposed and want == torch.float32 and torch.device(device).type == "cpu" and v.dim() == 2:
            out = torch.empty(v.shape[::-1], dtype=want).copy_(v.t()).t()  # cast and memory order in one copy
        else:
            out = v.to(device=device, dtype=want)
        if out.data_ptr() != v.data_ptr():  # a copy was made: the file's pages are not needed any more
            release(v)
        fitted[k] = out
    try:
        model.load_state_dict(fitted, strict=True, assign=True)
    except RuntimeError as e:  # a shape the caller did not check, or a key it did not map
        raise CheckpointError(f"{where}: the weights do not fit the inferred model: {str(e).splitlines()[0]}") from None
    del fitted
    left = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if left:  # a tensor the state dict does not carry (none today): fail loudly, not at forward time
        raise CheckpointError(f"{where}: {left[:3]} were not in the file; the model cannot be built without them")
    return model.eval()


class _PageRelease:
    """Drop the resident pages of a memory-mapped source tensor once it has been copied.

    A cast (bf16 file -> fp32 model) reads every page of the file; those pages stay counted in the
    process's resident memory until the mapping goes, so the peak would be the model plus the whole
    file. ``madvise(MADV_DONTNEED)`` on the pages that lie wholly inside a copied tensor returns them
    to the page cache. Only pages of *private file-backed* mappings are released (re-reading them
    gives the file's bytes again, so no tensor can change); anonymous memory is never touched.
    Linux only; elsewhere a no-op.
    """

    def __init__(self) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.madvise = None
        if not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self.madvise = libc.madvise
            self.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 6 and parts[1].endswith("p") and parts[5].startswith("/"):
                        a, b = (int(x, 16) for x in parts[0].split("-"))
                        self.ranges.append((a, b))
        except (OSError, AttributeError, ValueError):
            self.madvise = None

    def __call__(self, t: torch.Tensor) -> None:
        if self.madvise is None or t.device.type != "cpu" or not t.is_contiguous():
            return
        start = t.data_ptr()
        end = start + t.numel() * t.element_size()
        if not any(a <= start and end <= b for a, b in self.ranges):
            return
        page = mmap.PAGESIZE
        lo, hi = -(-start // page) * page, (end // page) * page
        if hi > lo:
            self.madvise(lo, hi - lo, 4)  # MADV_DONTNEED
