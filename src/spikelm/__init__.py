"""spikelm: spiking language models on RWKV.

Quick tour::

    import spikelm
    model = spikelm.load("RWKV-x060-World-1B6.pth")      # official .pth, HF folder or spikelm folder
    logits, state = model(idx)                            # (B, T, V), per-layer recurrent state
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())


def load(path, device="cpu", dtype=None):
    """Load any supported checkpoint (official RWKV-6 .pth/.safetensors, HF layout, spikelm folder)."""
    from .checkpoint import load as _load

    return _load(path, device=device, dtype=dtype)


__all__ = ["load", "__version__"]
