"""One model's energy, like for like: the spiking network beside ANN twins of the same weight precision.

**Like for like** (what the summary leads with). The spiking network is priced with the table of
its weights' width (8-bit weights: Horowitz's int8 row, 16: fp16, 32: fp32; ``table`` may name
another) and every baseline has weights of the same width and the same rows:

* **dense ANN** ``W{b}A{b}``: the same network with dense activations of the weights' width;
* **equal-information ANN** ``W{b}A{k}`` (Yan et al., arXiv 2409.08290): at the spike sites,
  activations with as many levels as the spike code (:func:`quantised_activations`, the code's
  decoded value), ``k = ceil(log2(T (2^l - 1) + 1)) + 1`` bits (``l + 1`` at ``T = 1``; a binary
  code has no sign bit); a MAC there costs :func:`~.constants.site_table` (int8 weights: the
  multiplier scaled by ``k / 8``);
* **equal-information ANN, zero-skipping**: the same, fetching a weight column and doing its MACs
  only for nonzero inputs at the spike sites, as the spiking network does for inputs that spiked
  (the ANN twin with the same sparsity; plus one comparison per input for the zero test).

Priced the same way on both sides: every row other than the spike sites' products (elementwise
work, WKV, norms, the dense layers, the head) at the table of the weights' width; the integer
baselines pay an activation quantiser at the spike sites (1 mul + 2 add per value: scale, round,
clip), the counterpart of the spiking network's encoders; weights at ``b`` bits in memory on both
sides; the sign-flag spikes select add or subtract in an adder-subtractor and cost no accumulate
(``flag_acs=True`` charges each ``C_out`` accumulates, the upper bound; the summary states how
much that would add). Each network is reported compute only, with SRAM, and with DRAM at batch
``B``; ``EE = baseline / spiking network`` per column.

**Break-even firing rate** (Dampfhoffer et al. 2023; Yan et al. 2024): per spiking layer (each
spike-driven linear layer, with its encoder) and overall, the firing rate at which the spiking
network would cost what each baseline costs, the spike-proportional work (accumulates, reset
subtractions, the weight columns fetched) scaled from the measured rate and everything else held
(:mod:`.breakeven`).

**The paper's convention** (kept, and labelled so): SpikeRWKV's eq. 5 (one neuron's input
weighting, fp32 at 45 nm, no memory) and the full count with both sides at 45 nm fp32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..markdown import md_table
from ..models.quantized import weight_bits as stored_weight_bits
from ..spiking.encoding import mhse_closed_form
from .breakeven import BreakEven, break_even
from .constants import PAPER_TABLE, EnergyTable, energy_table, site_table, table_for_bits
from .counters import Counts, Row
from .memory import MemoryModel, memory_report
from .report import FullReport, eq5, full_report, paper_entry

__all__ = ["code_bits", "quantised_activations", "Network", "Convention", "EnergySummary", "energy_summary",
           "energy_parts", "headline", "PARTS", "QUANTISER_OPS", "SpikeSite", "spike_sites"]

PARTS = ("dense compute", "event-driven compute", "encoders / quantisers", "memory")
# An integer activation quantiser per value: scale (1 mul), round and clip (2 add).
QUANTISER_OPS = {"mul": 1, "add": 2}


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
    return {"dense compute": rep.total_snn - spike - neuron, "event-driven compute": spike,
            "encoders / quantisers": neuron, "memory": memory_pj}


@dataclass
class SpikeSite:
    """A spike-driven linear row, per token: its dense MACs, input values, inputs that spiked, and
    its other dense operations (a bias)."""

    row: Row
    macs: float
    inputs: float
    active: float
    other: dict[str, float]

    @property
    def active_macs(self) -> float:
        return self.active * self.row.c_out


def spike_sites(counts: Counts) -> list[SpikeSite]:
    """The linear rows whose inputs are spikes (encoded or binary), per token."""
    tok = counts.tokens
    out = []
    for r in counts.ordered():
        if r.kind == "linear" and r.spikes is not None and r.c_out:
            macs = r.ann_ops["mac"] / tok
            out.append(SpikeSite(r, macs, macs / r.c_out, r.active / tok,
                                 {k: v / tok for k, v in r.ann_ops.items() if k != "mac"}))
    return out


@dataclass
class Baseline:
    """How one ANN twin is built: its site MAC price, activation width at the sites, zero skipping."""

    name: str
    role: str  # "dense", "equal" (equal information) or "zero" (equal information, zero-skipping)
    site: EnergyTable
    site_bits: int
    quantiser: bool
    zero_skipping: bool

    def site_compute(self, s: SpikeSite, t: EnergyTable) -> float:
        """pJ per token of one spike site's product in this baseline (bias adds and quantiser included)."""
        macs = s.active_macs if self.zero_skipping else s.macs
        q = {k: v * s.inputs for k, v in QUANTISER_OPS.items()} if self.quantiser else {}
        if self.zero_skipping:
            q["add"] = q.get("add", 0.0) + s.inputs  # the zero test
        return macs * self.site.e_mac + t.energy(q) + t.energy(s.other)


@dataclass
class Network:
    """One network of the summary (the spiking one or a baseline): compute only and with memory."""

    name: str
    precision: str  # e.g. "W8 + spikes", "W8A8", "W8A5"
    role: str  # "snn", or a baseline's: "dense", "equal" (equal information), "zero" (its zero-skipping twin)
    weight_bits: int
    act_bits: int | None  # activation bits at the spike sites (None: spikes)
    zero_skipping: bool
    compute: float
    sram: float  # compute + memory (SRAM)
    dram: float  # compute + memory (DRAM at batch B)
    parts_sram: dict[str, float]
    parts_dram: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Convention:
    """The paper's convention: both sides at ``table`` (45 nm fp32), every operation; and eq. 5."""

    table: str
    snn: Network
    ann: Network
    eq5: tuple[float, float] | None
    eq5_c_in: int

    def ee(self, col: str) -> float:
        s = getattr(self.snn, col)
        return getattr(self.ann, col) / s if s else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"convention": "the paper's: every operation of both sides at " + self.table, "table": self.table,
                "snn": self.snn.to_dict(), "ann": self.ann.to_dict(),
                **{f"ee_{c}": self.ee(c) for c in ("compute", "sram", "dram")},
                "eq5": None if self.eq5 is None else {"c_in": self.eq5_c_in, "e_ann_pj": self.eq5[0], "e_snn_pj": self.eq5[1],
                                                      "ee": self.eq5[0] / self.eq5[1] if self.eq5[1] else None}}


@dataclass
class EnergySummary:
    model: str
    table: str  # the spiking network's table (like for like: that of its weights' width)
    weight_bits: int
    batch: int
    bits: int | None  # the equal-information ANN's activation bits (None: no spike code)
    flag_acs: bool
    flag_pj: float  # what charging each flag spike C_out accumulates adds (pJ per token)
    fr: float | None  # firing rate pooled over the spike-driven linear inputs
    snn: Network
    baselines: list[Network]
    break_even: list[BreakEven]
    convention: Convention
    notes: list[str] = field(default_factory=list)

    @property
    def eq5(self) -> tuple[float, float] | None:
        return self.convention.eq5

    @property
    def eq5_c_in(self) -> int:
        return self.convention.eq5_c_in

    def ee(self, base: Network, col: str) -> float:
        s = getattr(self.snn, col)
        return getattr(base, col) / s if s else float("nan")

    def baseline(self, role: str) -> Network | None:
        """The baseline ``dense``, ``equal`` (equal information) or ``zero`` (zero-skipping), if present."""
        return next((b for b in self.baselines if b.role == role), None)

    def to_dict(self) -> dict[str, Any]:
        be = {b.baseline: b for b in self.break_even}
        return {
            "model": self.model, "comparison": f"like for like: {self.weight_bits}-bit weights on both sides",
            "table": self.table, "weight_bits": self.weight_bits, "batch": self.batch, "quantised_bits": self.bits,
            "flag_acs": self.flag_acs, "flag_upper_bound_pj": self.flag_pj, "firing_rate": self.fr,
            "snn": self.snn.to_dict(),
            "baselines": [{**b.to_dict(), "ee_compute": self.ee(b, "compute"), "ee_sram": self.ee(b, "sram"),
                           "ee_dram": self.ee(b, "dram"),
                           "break_even": be[b.name].to_dict() if b.name in be else None} for b in self.baselines],
            "paper_convention": self.convention.to_dict(),
            "eq5": self.convention.to_dict()["eq5"],
            "notes": self.notes,
        }

    def to_markdown(self) -> str:
        def cell(x: float | None) -> str:
            return "-" if x is None else ("inf" if math.isinf(x) else f"{x:.3f}")

        s = self.snn
        body = [[f"**{s.name}**", s.precision, _pj(s.compute), "-", _pj(s.sram), "-", _pj(s.dram), "-", "", "", ""]]
        be = {b.baseline: b for b in self.break_even}
        for b in self.baselines:
            x = be.get(b.name)
            body.append([b.name, b.precision, _pj(b.compute), f"{self.ee(b, 'compute'):.2f}", _pj(b.sram),
                         f"{self.ee(b, 'sram'):.2f}", _pj(b.dram), f"{self.ee(b, 'dram'):.2f}",
                         *(cell(None if x is None else x.overall[c]) for c in ("compute", "sram", "dram"))])
        dram = f"DRAM B={self.batch}"
        head = ["network", "precision", "compute pJ", "EE compute", "+SRAM pJ", "EE SRAM", f"+{dram} pJ", f"EE {dram}",
                "break-even fr compute", "break-even fr SRAM", f"break-even fr {dram}"]
        lines = [f"Like for like: energy per token of {self.model}, {self.weight_bits}-bit weights on both sides "
                 f"(spiking network priced at {self.table}; every baseline at {self.weight_bits}-bit weights); "
                 "EE = baseline / spiking network; break-even fr = the firing rate at which the spiking network would cost "
                 "what the baseline costs" + (f" (measured: {self.fr:.4f})" if self.fr is not None else "")
                 + "; '-': not cheaper even silent, 'inf': cheaper at any rate.", "",
                 headline(self), ""]
        lines.append(md_table(head, body, "llrrrrrrrrr"))
        flag = (f"Sign-flag spikes are charged C_out accumulates each (the upper bound): {self.flag_pj:,.1f} pJ per token "
                "of the spiking compute." if self.flag_acs else
                f"Sign-flag spikes select add or subtract (an adder-subtractor) and cost no accumulate; charging each "
                f"C_out accumulates (the upper bound) would add {self.flag_pj:,.1f} pJ per token "
                f"({100 * self.flag_pj / s.compute if s.compute else 0:.1f}% of the spiking compute).")
        lines += ["", flag]
        rows = self._break_even_rows()
        if rows:
            lines += ["", "Break-even firing rate per spiking layer (compute / +SRAM; '-': not cheaper even silent, "
                      "'inf': cheaper at any rate):", "", rows]
        c = self.convention
        lines += ["", f"The paper's convention (both sides at {c.table}, every operation; not like for like for a network "
                  f"of {self.weight_bits}-bit weights): spiking {c.snn.compute:,.1f} pJ against the dense ANN's "
                  f"{c.ann.compute:,.1f} pJ, EE compute {c.ee('compute'):.2f}, +SRAM {c.ee('sram'):.2f}, "
                  f"+{dram} {c.ee('dram'):.2f}."]
        if c.eq5 is not None:
            e_ann, e_snn = c.eq5
            lines += [f"Eq. 5 (the paper's convention: one neuron's input weighting, C_in = {c.eq5_c_in}, {c.table}, no "
                      f"memory, no sign-flag spikes): E_ann {e_ann:,.1f} pJ, E_snn {e_snn:,.1f} pJ, "
                      f"EE {e_ann / e_snn if e_snn else float('inf'):.2f}."]
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines)

    def _break_even_rows(self) -> str:
        if not self.break_even or not self.break_even[0].rows:
            return ""

        def f(x: float | None) -> str:
            return "-" if x is None else ("inf" if math.isinf(x) else f"{x:.3f}")

        names = [b.baseline for b in self.break_even]
        body = []
        for i, r in enumerate(self.break_even[0].rows):
            line = [r.name, f"{r.fr:.4f}"]
            for b in self.break_even:
                rb = b.rows[i]
                line.append(f"{f(rb.compute)} / {f(rb.sram)}")
            body.append(line)
        return md_table(["spiking layer", "fr", *names], body, "lr" + "r" * len(names))


def _pj(x: float) -> str:
    return f"{x:,.1f}" if abs(x) >= 100 else f"{x:.4g}"


def headline(s: EnergySummary, memory: str = "sram") -> str:
    """One sentence: what wins, like for like, and by how much (memory in SRAM by default)."""
    dense = s.baseline("dense")
    if dense is None:
        return ""
    where = {"compute": "compute only", "sram": "memory in SRAM", "dram": f"memory in DRAM, batch {s.batch}"}[memory]
    parts = []
    for b in [dense, s.baseline("equal"), s.baseline("zero")]:
        if b is None:
            continue
        ee = s.ee(b, memory)
        verdict = (f"the spiking network is {ee:.2f}x cheaper" if ee >= 1.005 else
                   f"the ANN is {1 / ee:.2f}x cheaper" if ee <= 0.995 else "they cost the same to within 0.5%")
        parts.append(f"against the {b.name} {verdict} (EE {ee:.2f})")
    return f"Like for like ({s.weight_bits}-bit weights on both sides, {where}): " + "; ".join(parts) + "."


def _baselines(wb: int, bits: int | None, t: EnergyTable) -> list[Baseline]:
    integer = wb == 8
    out = [Baseline(f"ANN W{wb}A{wb} (dense)", "dense", t, wb, quantiser=integer, zero_skipping=False)]
    if bits is not None:
        out.append(Baseline(f"equal-information ANN W{wb}A{bits} (dense)", "equal", site_table(wb, bits), bits, True, False))
        out.append(Baseline(f"equal-information ANN W{wb}A{bits} (zero-skipping)", "zero", site_table(wb, bits), bits, True,
                            True))
    return out


def _table_of(table: str | EnergyTable | None, wb: int) -> EnergyTable:
    if isinstance(table, EnergyTable):
        return table
    return table_for_bits(wb) if table in (None, "", "auto") else energy_table(table)


def energy_summary(model: nn.Module, counts: Counts, table: str | EnergyTable | None = None, *, batch: int = 1,
                   flag_acs: bool = False, weight_bits: int | None = None,
                   paper: str | EnergyTable = PAPER_TABLE) -> EnergySummary:
    """The spiking network (as counted in ``counts``) beside its ANN twins at the same weight precision.

    ``weight_bits``: the width of the weights on both sides (default: how ``model`` stores them,
    :func:`spikelm.models.quantized.weight_bits`); ``table``: the spiking network's table (default:
    that width's); ``paper``: the table of the paper's-convention figures (fp32 at 45 nm).
    """
    wb = stored_weight_bits(model) if weight_bits is None else weight_bits
    t = _table_of(table, wb)
    rep = full_report(counts, t, flag_acs=flag_acs)
    mems = (MemoryModel("sram", 1), MemoryModel("dram", batch))
    entry = paper_entry(counts, "", "")
    bits = None
    if entry is not None:
        signed = any(r.encoded for r in counts.rows.values())
        bits = code_bits(entry.T, entry.layers, signed)
    sites = spike_sites(counts)
    notes: list[str] = []
    if t.bits != wb:
        notes.append(f"the spiking network is priced at {t.name} ({t.bits}-bit operands) though its weights are "
                     f"{wb}-bit; the baselines use {wb}-bit weights")

    snn_mem = [memory_report(model, counts, m, weight_bits=wb, act_bits=t.bits) for m in mems]
    snn = Network(f"spiking network (W{wb} + spikes)", f"W{wb} + spikes", "snn", wb, None, True, rep.total_snn,
                  rep.total_snn + snn_mem[0].e_snn, rep.total_snn + snn_mem[1].e_snn,
                  energy_parts(rep, snn_mem[0].e_snn), energy_parts(rep, snn_mem[1].e_snn))
    site_ann = {k: sum(s.row.ann_ops[k] for s in sites) / counts.tokens for k in rep.ann_ops_total}  # priced per site
    rest = {k: rep.ann_ops_total[k] - site_ann[k] for k in rep.ann_ops_total}
    base_t = table_for_bits(wb)
    out, base_mems = [], {}
    bases = _baselines(wb, bits, base_t)
    for b in bases:
        site_pj = [b.site_compute(s, base_t) for s in sites]
        comp = base_t.energy(rest) + sum(site_pj)
        quant = sum(base_t.energy({k: v * s.inputs for k, v in QUANTISER_OPS.items()}) for s in sites) if b.quantiser else 0.0
        if b.zero_skipping:
            quant += base_t.energy({"add": sum(s.inputs for s in sites)})  # the zero tests
        event = sum(s.active_macs for s in sites) * b.site.e_mac if b.zero_skipping else 0.0
        mem = [memory_report(model, counts, m, weight_bits=wb, act_bits=wb, ann_site_act_bits=b.site_bits,
                             ann_skips_zeros=b.zero_skipping) for m in mems]
        base_mems[b.name] = mem
        parts = {"dense compute": comp - quant - event, "event-driven compute": event, "encoders / quantisers": quant}
        out.append(Network(b.name, f"W{wb}A{b.site_bits}", b.role, wb, b.site_bits, b.zero_skipping, comp, comp + mem[0].e_ann,
                           comp + mem[1].e_ann, {**parts, "memory": mem[0].e_ann}, {**parts, "memory": mem[1].e_ann}))
    be = [break_even(counts, rep, snn_mem, [base_mems[b.name][0], base_mems[b.name][1]],
                     [b.site_compute(s, base_t) for s in sites], net, sites, batch, entry.fr if entry else None)
          for b, net in zip(bases, out)] if sites and entry is not None else []
    flag_pj = rep.ops_total["flag_ac"] * t.e_ac
    return EnergySummary(counts.model, t.name, wb, batch, bits, flag_acs, flag_pj, entry.fr if entry else None, snn, out,
                         be, _convention(model, counts, paper, batch, flag_acs, entry), notes)


def _convention(model: nn.Module, counts: Counts, paper: str | EnergyTable, batch: int, flag_acs: bool,
                entry: Any) -> Convention:
    """Both sides at the paper's table (fp32, 32-bit weights and activations in memory) and eq. 5."""
    t = paper if isinstance(paper, EnergyTable) else energy_table(paper)
    rep = full_report(counts, t, flag_acs=flag_acs)
    mems = [memory_report(model, counts, m, weight_bits=t.bits, act_bits=t.bits)
            for m in (MemoryModel("sram", 1), MemoryModel("dram", batch))]
    snn = Network(f"spiking network (fp{t.bits} + spikes)", f"fp{t.bits} + spikes", "snn", t.bits, None, True, rep.total_snn, rep.total_snn + mems[0].e_snn,
                  rep.total_snn + mems[1].e_snn, energy_parts(rep, mems[0].e_snn), energy_parts(rep, mems[1].e_snn))
    comp = rep.total_ann
    dense = {"dense compute": comp, "event-driven compute": 0.0, "encoders / quantisers": 0.0}
    ann = Network(f"ANN fp{t.bits} (dense)", f"W{t.bits}A{t.bits}", "dense", t.bits, t.bits, False, comp, comp + mems[0].e_ann,
                  comp + mems[1].e_ann, {**dense, "memory": mems[0].e_ann}, {**dense, "memory": mems[1].e_ann})
    e5, c_in = None, int(getattr(getattr(model, "cfg", None), "n_embd", 0) or 0)
    if entry is not None and c_in:  # eq. 5 needs C_in: the model's width
        e5 = eq5(c_in, entry.fr, entry.T, entry.layers, t)
    return Convention(t.name, snn, ann, e5, c_in)
