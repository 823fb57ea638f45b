"""What the GPU benchmarks share: the device they run on (CUDA, or a CPU smoke run of the script),
its description, and the versions of the packages that bring kernels."""

from __future__ import annotations

import importlib.metadata
import sys

import torch


def version(name: str) -> str:
    """The installed version of package ``name``, or "absent"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def pick_device(name: str) -> tuple[torch.device, str]:
    """(device, its description); exits with code 2 saying why where ``cuda`` has no GPU. ``cpu``
    is a smoke run of the script, its times meaningless."""
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU (or --device cpu for a smoke run)", file=sys.stderr)
        raise SystemExit(2)
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    return dev, where
