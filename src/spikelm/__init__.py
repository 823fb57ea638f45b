"""spikelm: spiking language models on RWKV.

Quick tour::

    import spikelm
    model = spikelm.load("RWKV-x060-World-1B6.pth")                 # official .pth, HF folder or spikelm folder
    logits, state = model(idx)                                      # (B, T, V), per-layer recurrent state
    spikelm.quantize_weights(model, 8)                              # int8 weights, a scale per output channel
    snn = spikelm.apply_preset(model, "SpikeRWKV-4L", calib_data="default")   # calibrated spiking model
    spikelm.set_method(snn, "sim")                                  # step-by-step IF simulation (reference)
    print(spikelm.generate(snn, "The Eiffel tower is", max_tokens=40).text)

This package file is the facade of the whole library (the top floor, beside :mod:`spikelm.cli`):
it imports from every floor below and nothing below imports it.
"""

from __future__ import annotations

import logging

__version__ = "0.2.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

from .checkpoints import load, save  # noqa: E402  (after __version__: the CLI reads it)
from .convert import set_method  # noqa: E402
from .evaluate.variants import apply_encoding as apply_preset  # noqa: E402
from .generate import generate  # noqa: E402
from .models.quantized import quantize_weights  # noqa: E402

__all__ = ["load", "save", "apply_preset", "set_method", "generate", "quantize_weights", "__version__"]
