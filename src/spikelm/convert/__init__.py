"""SpikeRWKV conversion: sites (:mod:`.sites`), calibration (:mod:`.calibrate`), presets and
:func:`convert` (:mod:`.conversion`). It takes calibration batches and never fetches data."""

from .calibrate import calibrate
from .conversion import PRESETS, apply_preset, convert, converted, preset_config
from .sites import (
           attach_encoders,
           check_convertible,
           detach_encoders,
           encoders,
           set_method,
           site_names,
)

__all__ = ["calibrate", "PRESETS", "apply_preset", "convert", "converted", "preset_config", "detach_encoders", "attach_encoders", "check_convertible",
           "encoders", "set_method", "site_names"]
