"""Spiking building blocks (torch only): surrogate spike functions, IF/LIF neurons with explicit
state, and the multi-head spike encoding / rate coding of activations."""

from .encoding import (
    METHODS,
    SpikeStats,
    decode,
    mhse_a_max,
    mhse_closed_form,
    mhse_simulate,
    mhse_spike_counts,
    mhse_weights,
    rate_closed_form,
    rate_simulate,
    spike_encode,
)
from .neurons import SCAN_BACKENDS, IFNeuron, LIFNeuron, SpikingNeuron, set_scan_backend
from .surrogate import ArcTan, Sigmoid, Surrogate, SurrogateSpike, heaviside, make_surrogate

__all__ = [
    "ArcTan",
    "Sigmoid",
    "Surrogate",
    "SurrogateSpike",
    "heaviside",
    "make_surrogate",
    "SpikingNeuron",
    "IFNeuron",
    "LIFNeuron",
    "SCAN_BACKENDS",
    "set_scan_backend",
    "METHODS",
    "SpikeStats",
    "decode",
    "mhse_a_max",
    "mhse_closed_form",
    "mhse_simulate",
    "mhse_spike_counts",
    "mhse_weights",
    "rate_closed_form",
    "rate_simulate",
    "spike_encode",
]
