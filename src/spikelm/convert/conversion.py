"""Convert a pretrained RWKV-6 into a spiking network (SpikeRWKV, sections 3.2-3.5).

What changes: the *input* of chosen linear layers (:mod:`.sites`) is spike-encoded, i.e. replaced
by the value its spikes decode to (multi-head spike encoding, or rate coding for the SNN-RWKV
baseline; :mod:`spikelm.spiking.layers`). Each token is encoded independently over its own ``T``
time steps, membranes starting afresh (``v = 0`` or ``w_l / 2``), so recurrent decoding of a
converted model equals its parallel forward exactly as for the ANN. Scales come from
:func:`.calibrate.calibrate` on batches the caller provides.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from torch import Tensor, nn

from ..config import ConfigError, EncodingConfig
from ..errors import SpikelmError
from .calibrate import calibrate
from .sites import attach_encoders, check_convertible, detach_encoders, encoders

__all__ = ["PRESETS", "preset_config", "convert", "apply_preset", "converted"]

# The paper's configurations (Tables 1-3) and spikelm's own recommended setting.
PRESETS: dict[str, dict] = {
    "SNN-RWKV-3": dict(encoding="rate", T=3, layers=1),
    "SNN-RWKV-4": dict(encoding="rate", T=4, layers=1),
    "SpikeRWKV-3L": dict(encoding="mhse", T=1, layers=3),
    "SpikeRWKV-4L": dict(encoding="mhse", T=1, layers=4),
    "SpikeRWKV-5L": dict(encoding="mhse", T=1, layers=5),
    # spikelm's own: 4 spike layers like SpikeRWKV-4L, with rounding (init_half) and per-channel
    # scales at the 99.99th percentile, so outliers in one channel do not coarsen the others.
    "spikelm-4L": dict(encoding="mhse", T=1, layers=4, init_half=True, granularity="channel",
                       calibration="percentile", percentile=99.99),
}


def convert(model: nn.Module, enc: EncodingConfig, calib_batches: Iterable[Tensor] | None) -> nn.Module:
    """Calibrate on ``calib_batches`` then swap the sites for spiking modules (in place)."""
    if enc.encoding == "none":
        return model
    check_convertible(model)
    if calib_batches is None:
        raise SpikelmError("conversion needs calibration data: pass --calib-data (a corpus name such as 'default', or a text file)")
    scales = calibrate(model, calib_batches, enc)
    attach_encoders(model, enc)
    for name, e in encoders(model):
        e.scale.copy_(scales[name].to(e.scale.device).reshape(e.scale.shape))
    return model


def preset_config(name: str, sites: str = "time_mix") -> EncodingConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    return EncodingConfig.from_dict({**PRESETS[name], "sites": sites})


def apply_preset(model: nn.Module, name: str, calib_batches: Iterable[Tensor], sites: str = "time_mix") -> nn.Module:
    """Convert ``model`` in place with a named preset (``SpikeRWKV-4L`` ...), calibrating on ``calib_batches``.

    ``spikelm.apply_preset(model, name, calib_data="default")`` makes the batches from a data argument.
    """
    return convert(model, preset_config(name, sites), calib_batches)


@contextmanager
def converted(model: nn.Module, enc: EncodingConfig, calib_batches: Iterable[Tensor]) -> Iterator[nn.Module]:
    """``model`` converted in place for the ``with`` block, then restored to the ANN it was.

    For comparing settings on one large model (sweeps): the weights are shared throughout, so no
    second copy of the model ever exists (a deep copy per setting doubled a sweep's peak memory).
    """
    convert(model, enc, calib_batches)
    try:
        yield model
    finally:
        detach_encoders(model)
