"""Energy per arithmetic operation, with the source of every number.

Both papers price their operations with one table: M. Horowitz, "1.1 Computing's energy problem
(and what we can do about it)", IEEE ISSCC 2014, Digest of Technical Papers, pp. 10-14, the
"rough energy costs for various operations in 45nm 0.9V" figure (cited as [28] in SpikeRWKV,
Table 3: "E_MAC = 4.6 pJ and E_AC = 0.9 pJ", 32-bit float). That figure gives, per operation:

=============  ===========  ===========
operand        add (pJ)     mult (pJ)
=============  ===========  ===========
8-bit int      0.03         0.2
16-bit int     0.05         --
32-bit int     0.1          3.1
16-bit float   0.4          1.1
32-bit float   0.9          3.7
=============  ===========  ===========

and memory reads, which both papers exclude (SpikeRWKV section 4.3: "excluding memory access
energy") and :mod:`spikelm.energy.memory` charges when asked (:data:`SRAM_PJ_PER_64B`,
:data:`DRAM_PJ_PER_64B`): 8 KB SRAM 10 pJ, 32 KB SRAM 20 pJ, 1 MB SRAM 100 pJ per 64-bit word,
DRAM 1.3-2.6 nJ per 64-bit access.

How operations are priced (see :mod:`spikelm.energy.counters` for what is counted):

* ``mac`` (a dense multiply-accumulate, e.g. one weight times one real activation, summed):
  ``E_MAC = E_mult + E_add`` (4.6 pJ for fp32, the papers' figure);
* ``ac`` (an accumulate caused by a spike: the synaptic weight is added, nothing is multiplied):
  ``E_AC = E_add`` (0.9 pJ for fp32);
* ``mul`` / ``add`` (elementwise arithmetic on real values, comparisons counted as adds):
  ``E_mult`` / ``E_add``;
* ``special`` (exp, tanh, sigmoid, division, reciprocal square root): ``special_macs`` MACs each,
  1 by default. Horowitz prices none of these; hardware computes them by a few multiply-adds of a
  polynomial or a table look-up, so 1 MAC is a lower bound. The reports list the count of special
  functions separately, so they can be re-priced.

A user-supplied ``E_MAC`` / ``E_AC`` (``--e-mac``, ``--e-ac``) keeps that reading:
``E_add = E_AC`` and ``E_mult = E_MAC - E_AC``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import SpikelmError

__all__ = ["HOROWITZ_2014", "LEMAIRE_2022", "DAMPFHOFFER_2023", "YAN_2024", "EnergyTable", "TABLES", "OP_KINDS",
           "energy_table", "SRAM_PJ_PER_64B", "DRAM_PJ_PER_64B", "quantised_table", "BITS_TABLES", "table_for_bits",
           "site_table", "PAPER_TABLE"]

HOROWITZ_2014 = (
    "M. Horowitz, '1.1 Computing's energy problem (and what we can do about it)', "
    "IEEE ISSCC 2014 Digest of Technical Papers, pp. 10-14 (45 nm, 0.9 V)"
)

LEMAIRE_2022 = (
    "E. Lemaire et al., 'An analytical estimation of spiking neural networks energy efficiency', "
    "ICONIP 2022 (E = operations + addressing + memory: weights, activations, neuron state)"
)
DAMPFHOFFER_2023 = (
    "M. Dampfhoffer et al., 'Are SNNs really more energy-efficient than ANNs? An in-depth hardware-aware "
    "study', IEEE TETCI 7(3), 2023 (with memory counted, IF SNNs compete only below ~0.15-1.38 spikes "
    "per synapse per inference)"
)
YAN_2024 = (
    "Z. Yan et al., arXiv 2409.08290 (2024) (the fair baseline: a quantised ANN whose activations carry "
    "as many levels as the spike code)"
)

# SRAM read energy per 64-bit word by array size (bytes, pJ), Horowitz 2014's memory figure. An
# array larger than the largest listed is priced as the largest (a lower bound).
SRAM_PJ_PER_64B: tuple[tuple[int, float], ...] = ((8 * 1024, 10.0), (32 * 1024, 20.0), (1024 * 1024, 100.0))
# DRAM per 64-bit access: Horowitz gives 1.3-2.6 nJ; the low end, so memory is never overcharged.
DRAM_PJ_PER_64B = 1300.0

# Operation kinds that the counters produce and a table prices. ``flag_ac``: accumulates that a
# sign-flag spike would cost if it drove its own synaptic pass (priced at E_AC only when asked).
OP_KINDS = ("mac", "ac", "flag_ac", "mul", "add", "special")


@dataclass(frozen=True)
class EnergyTable:
    """Energy of one multiplication and one addition (pJ) at some precision and process node."""

    name: str
    e_mult: float
    e_add: float
    source: str
    special_macs: float = 1.0
    bits: int = 32  # operand width: the bytes a weight or an activation occupies in memory

    def __post_init__(self) -> None:
        if not (self.e_mult >= 0.0 and self.e_add > 0.0 and self.special_macs >= 0.0):
            raise SpikelmError(
                f"energy table {self.name!r}: need E_mult >= 0, E_add > 0 and special_macs >= 0, "
                f"got {self.e_mult}, {self.e_add}, {self.special_macs}"
            )

    @property
    def e_mac(self) -> float:
        """Multiply-accumulate: one multiplication and one addition."""
        return self.e_mult + self.e_add

    @property
    def e_ac(self) -> float:
        """Accumulate: one addition (what a spike costs per synapse)."""
        return self.e_add

    @property
    def e_special(self) -> float:
        return self.special_macs * self.e_mac

    def price(self, kind: str, flag_acs: bool = False) -> float:
        """pJ of one operation of ``kind`` (one of :data:`OP_KINDS`)."""
        if kind == "mac":
            return self.e_mac
        if kind == "ac":
            return self.e_ac
        if kind == "flag_ac":
            return self.e_ac if flag_acs else 0.0
        if kind == "mul":
            return self.e_mult
        if kind == "add":
            return self.e_add
        if kind == "special":
            return self.e_special
        raise ValueError(f"unknown operation kind {kind!r}; kinds: {', '.join(OP_KINDS)}")

    def energy(self, ops: dict[str, float], flag_acs: bool = False) -> float:
        """pJ of a bag of operations ``{kind: count}``."""
        return sum(n * self.price(k, flag_acs) for k, n in ops.items() if n)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "e_mac": self.e_mac, "e_ac": self.e_ac, "e_mult": self.e_mult,
            "e_add": self.e_add, "e_special": self.e_special, "special_macs": self.special_macs,
            "bits": self.bits, "source": self.source,
        }


_FIG = HOROWITZ_2014 + ", energy-per-operation figure"
TABLES: dict[str, EnergyTable] = {
    "45nm-fp32": EnergyTable("45nm-fp32", e_mult=3.7, e_add=0.9, source=_FIG + ": 32-bit float"),
    "45nm-fp16": EnergyTable("45nm-fp16", e_mult=1.1, e_add=0.4, source=_FIG + ": 16-bit float", bits=16),
    "45nm-int32": EnergyTable("45nm-int32", e_mult=3.1, e_add=0.1, source=_FIG + ": 32-bit int"),
    "45nm-int8": EnergyTable("45nm-int8", e_mult=0.2, e_add=0.03, source=_FIG + ": 8-bit int", bits=8),
}


def quantised_table(act_bits: int) -> EnergyTable:
    """Int8 weights times ``act_bits``-bit activations (the equal-information ANN of Yan et al.).

    An array multiplier's energy grows with the product of its operand widths, so the 8 x 8-bit
    multiply (0.2 pJ) scales by ``act_bits / 8``; the accumulate stays the 8-bit add (0.03 pJ).
    Weights occupy 8 bits in memory.
    """
    if act_bits < 1:
        raise SpikelmError(f"activation bits must be >= 1, got {act_bits}")
    return EnergyTable(f"W8A{act_bits}", e_mult=0.2 * act_bits / 8, e_add=0.03,
                       source=_FIG + f": 8-bit int, multiply scaled by {act_bits}/8 ({YAN_2024})", bits=8)


def energy_table(name: str = "45nm-fp32", e_mac: float = 0.0, e_ac: float = 0.0, special_macs: float = 1.0) -> EnergyTable:
    """A named table, optionally with ``E_MAC`` and/or ``E_AC`` replaced (values <= 0 keep the table's).

    Replacing keeps the reading of the module docstring: ``E_add = E_AC``, ``E_mult = E_MAC - E_AC``.
    """
    if name not in TABLES:
        raise SpikelmError(f"unknown energy table {name!r}; tables: {', '.join(TABLES)}")
    base = TABLES[name]
    if e_mac <= 0.0 and e_ac <= 0.0 and special_macs == base.special_macs:
        return base
    mac = e_mac if e_mac > 0.0 else base.e_mac
    ac = e_ac if e_ac > 0.0 else base.e_ac
    if mac < ac:
        raise SpikelmError(f"E_MAC ({mac} pJ) must be at least E_AC ({ac} pJ): "
                           "a multiply-accumulate includes the accumulate")
    parts = [f"E_MAC={mac:g}" if e_mac > 0.0 else "", f"E_AC={ac:g}" if e_ac > 0.0 else ""]
    label = ", ".join(p for p in parts if p)
    return EnergyTable(
        name=f"{name} ({label})" if label else name,
        e_mult=mac - ac,
        e_add=ac,
        source=base.source + (f"; user-supplied {label}" if label else ""),
        special_macs=special_macs,
        bits=base.bits,
    )


# The table that prices a network whose weights are stored at this many bits (like for like: the
# spiking network and every baseline it is compared with use the table of their shared width).
BITS_TABLES = {32: "45nm-fp32", 16: "45nm-fp16", 8: "45nm-int8"}
PAPER_TABLE = "45nm-fp32"  # SpikeRWKV's (and SpikeGPT's) convention: every operation at fp32


def table_for_bits(bits: int) -> EnergyTable:
    """The Horowitz table of ``bits``-bit weights and activations (``BITS_TABLES``)."""
    if bits not in BITS_TABLES:
        raise SpikelmError(f"no energy table for {bits}-bit weights; widths: {', '.join(map(str, BITS_TABLES))}")
    return TABLES[BITS_TABLES[bits]]


def site_table(weight_bits: int, act_bits: int) -> EnergyTable:
    """What a MAC of a ``weight_bits`` weight by an ``act_bits`` activation costs: at 8-bit weights
    :func:`quantised_table` (the multiplier scaled by ``act_bits / 8``, Yan et al.); at float weights
    (16, 32) the float MAC of that width (a float multiplier is not cheaper for an operand that
    happens to be a small integer times a scale)."""
    return quantised_table(act_bits) if weight_bits == 8 else table_for_bits(weight_bits)
