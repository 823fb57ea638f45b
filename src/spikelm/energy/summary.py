"""One model's energy, every way at once: eq. 5, compute only, compute + memory, fair baselines.

The spiking network as run is priced with the chosen table (fp32 at 45 nm by default) and set
beside ANN baselines with the same rows and dense activations:

* the same ANN at fp32, fp16 and int8 (W8A8) prices (Horowitz 2014);
* the **equal-information quantised ANN** (Yan et al., arXiv 2409.08290): int8 weights and
  activations with as many levels as the spike code. An MHSE code of ``l`` layers over ``T`` steps
  carries ``T (2^l - 1) + 1`` magnitudes and a sign: ``bits = ceil(log2(T (2^l - 1) + 1)) + 1``,
  i.e. ``l + 1`` bits at ``T = 1``; a binary {0, 1} code (SpikeGPT) has no sign.
  :func:`quantised_activations` gives those activations (the code's decoded value).

Each is reported compute only (memory ``none``) and with memory (``sram``; ``dram`` at batch B),
and the efficiency ratio EE = baseline / spiking per column. The eq. 5 line keeps the paper's
convention (one neuron's input weighting, C_in MACs against C_in fr T l ACs, no memory, no flag
spikes) and says so.

The spiking network's compute here charges the sign-flag spikes (``flag_acs=True``: each costs
``C_out`` accumulates, the reading in which a negative value needs its own synaptic pass), so
every spike of the code is in the count; pass ``flag_acs=False`` for the sign-select reading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from ..markdown import md_table
from ..spiking.encoding import mhse_closed_form
from .constants import TABLES, EnergyTable, energy_table, quantised_table
from .counters import Counts
from .memory import MemoryModel, memory_report
from .report import FullReport, eq5, full_report, paper_entry

__all__ = ["code_bits", "quantised_activations", "Network", "EnergySummary", "energy_summary", "energy_parts"]

PARTS = ("dense compute", "spike-driven compute", "neuron updates", "memory")


def code_bits(T: int, layers: int, signed: bool = True) -> int:
    """Bits that carry as many levels as a spike code of ``layers`` layers over ``T`` steps."""
    return math.ceil(math.log2(T * (2**layers - 1) + 1)) + (1 if signed else 0)


def quantised_activations(x: Tensor, scale: float | Tensor, T: int, layers: int, init_half: bool = False) -> Tensor:
    """The equal-information ANN's activations: ``x`` on the levels of the spike code (its decoded value)."""
    return mhse_closed_form(x, scale, T, layers, 2.0, 1, init_half, stats=False)[0]


def energy_parts(rep: FullReport, memory_pj: float) -> dict[str, float]:
    """pJ per token in the four parts of the stacked bars; they sum to compute + memory."""
    neuron = sum(r.e_snn for r in rep.rows if r.kind in ("encode", "neuron"))
    spike = rep.total_spike
    return {"dense compute": rep.total_snn - spike - neuron, "spike-driven compute": spike,
            "neuron updates": neuron, "memory": memory_pj}


@dataclass
class Network:
    """One column set of the summary: a network (the SNN or a baseline) compute-only and with memory."""

    name: str
    compute: float
    sram: float  # compute + memory (SRAM)
    dram: float  # compute + memory (DRAM at batch B)
    parts_sram: dict[str, float]
    parts_dram: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class EnergySummary:
    model: str
    table: str
    batch: int
    bits: int | None  # the equal-information ANN's activation bits (None: no spike code)
    eq5: tuple[float, float] | None  # (E_ann, E_snn) of the paper's formula, C_in = n_embd
    eq5_c_in: int
    snn: Network
    baselines: list[Network]

    def ee(self, base: Network, col: str) -> float:
        s = getattr(self.snn, col)
        return getattr(base, col) / s if s else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "table": self.table, "batch": self.batch, "quantised_bits": self.bits,
            "eq5": None if self.eq5 is None else {"c_in": self.eq5_c_in, "e_ann_pj": self.eq5[0], "e_snn_pj": self.eq5[1],
                                                  "ee": self.eq5[0] / self.eq5[1] if self.eq5[1] else None},
            "snn": self.snn.to_dict(),
            "baselines": [{**b.to_dict(), "ee_compute": self.ee(b, "compute"), "ee_sram": self.ee(b, "sram"),
                           "ee_dram": self.ee(b, "dram")} for b in self.baselines],
        }

    def to_markdown(self) -> str:
        body = [[f"**{self.snn.name}**", f"{self.snn.compute:,.1f}", "-", f"{self.snn.sram:,.1f}", "-",
                 f"{self.snn.dram:,.1f}", "-"]]
        for b in self.baselines:
            body.append([b.name, f"{b.compute:,.1f}", f"{self.ee(b, 'compute'):.2f}", f"{b.sram:,.1f}",
                         f"{self.ee(b, 'sram'):.2f}", f"{b.dram:,.1f}", f"{self.ee(b, 'dram'):.2f}"])
        dram = f"DRAM B={self.batch}"
        head = ["network", "compute pJ", "EE compute", "+SRAM pJ", "EE SRAM", f"+{dram} pJ", f"EE {dram}"]
        lines = [f"Energy per token of {self.model} ({self.table}); EE = baseline / spiking network.", ""]
        if self.eq5 is not None:
            e_ann, e_snn = self.eq5
            lines += [f"Eq. 5 (the paper's convention: one neuron's input weighting, C_in = {self.eq5_c_in}, no memory, "
                      f"no sign-flag spikes): E_ann {e_ann:,.1f} pJ, E_snn {e_snn:,.1f} pJ, "
                      f"EE {e_ann / e_snn if e_snn else float('inf'):.2f}.", ""]
        return "\n".join(lines) + "\n" + md_table(head, body, "lrrrrrr")


def energy_summary(model: nn.Module, counts: Counts, table: str | EnergyTable = "45nm-fp32", *, batch: int = 1,
                   flag_acs: bool = True) -> EnergySummary:
    """The spiking network (as counted in ``counts``) beside its ANN baselines, every energy."""
    t = table if isinstance(table, EnergyTable) else energy_table(table)
    rep = full_report(counts, t, flag_acs=flag_acs)
    mems = (MemoryModel("sram", 1), MemoryModel("dram", batch))
    entry = paper_entry(counts, "", "")
    bits = None
    if entry is not None:
        signed = any(r.encoded for r in counts.rows.values())
        bits = code_bits(entry.T, entry.layers, signed)

    snn_mem = [memory_report(model, counts, m, weight_bits=t.bits, act_bits=t.bits) for m in mems]
    snn = Network("spiking network", rep.total_snn, rep.total_snn + snn_mem[0].e_snn, rep.total_snn + snn_mem[1].e_snn,
                  energy_parts(rep, snn_mem[0].e_snn), energy_parts(rep, snn_mem[1].e_snn))
    bases: list[tuple[str, EnergyTable, int]] = [
        ("ANN fp32", TABLES["45nm-fp32"], 32), ("ANN fp16/bf16", TABLES["45nm-fp16"], 16),
        ("ANN int8 (W8A8)", TABLES["45nm-int8"], 8)]
    if bits is not None:
        bases.append((f"quantised ANN (W8A{bits}, equal information)", quantised_table(bits), bits))
    out = []
    for name, bt, a_bits in bases:
        comp = bt.energy(rep.ann_ops_total)
        mem = [memory_report(model, counts, m, weight_bits=t.bits, act_bits=t.bits, ann_weight_bits=bt.bits,
                             ann_act_bits=a_bits).e_ann for m in mems]
        dense = {"dense compute": comp, "spike-driven compute": 0.0, "neuron updates": 0.0}
        out.append(Network(name, comp, comp + mem[0], comp + mem[1], {**dense, "memory": mem[0]},
                           {**dense, "memory": mem[1]}))
    c_in = 0
    e5 = None
    if entry is not None:
        c_in = int(getattr(getattr(model, "cfg", None), "n_embd", 0) or 0)
        e5 = eq5(c_in, entry.fr, entry.T, entry.layers, t)
    return EnergySummary(counts.model, t.name, batch, bits, e5, c_in, snn, out)
