"""A model's spiking variant by preset name, calibrated on a data argument.

The one place where a preset name and a ``--calib-data`` argument become a converted model: the
``nlu``, ``generate``, ``energy`` and ``eval`` commands, the lm-evaluation-harness adapter and
``spikelm.apply_preset`` all call :func:`apply_encoding`.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..convert import apply_preset
from ..data.text import DEFAULT_CALIB_DATA, calibration_batches
from ..progress import ProgressFn

__all__ = ["apply_encoding"]


def apply_encoding(model: nn.Module, encoding: str, calib_data: str = DEFAULT_CALIB_DATA, sites: str = "time_mix",
                   calib_batches: Sequence[Tensor] | None = None, progress: ProgressFn | None = None) -> nn.Module:
    """``model`` converted in place with the preset ``encoding`` ("" = unchanged), calibrated on the
    ``train`` split of ``calib_data`` (or on ``calib_batches`` when given)."""
    if not encoding:
        return model
    if calib_batches is None:
        calib_batches = calibration_batches(calib_data, model.tokenizer_name, progress=progress)
    return apply_preset(model, encoding, calib_batches, sites)
