"""Energy reports: SpikeRWKV's formula (eq. 5, Table 3) and a full count of every operation.

Two reports, side by side, because they answer different questions:

**Paper formula** (SpikeRWKV sec. 4.3, eq. 5, which follows Luo et al., ECCV 2024)::

    E_ann = C_in * E_MAC
    E_snn = C_in * fr * T * l * E_AC
    EE    = E_ann / E_snn

the energy of *one* neuron's input weighting: ``C_in`` inputs, each a MAC in the ANN, or
``fr * T * l`` spikes on average in the SNN, each an accumulate. ``fr`` is the average firing rate
(spikes per neuron per time step per spike layer). The paper's Table 3 uses ``C_in = 2560`` (the
width of RWKV-6 3B: ``11776 pJ / 4.6 pJ``), fp32 at 45 nm, and averages over tasks by the mean of
the per-task energies, with ``EE`` of the average computed from the average energy.
Reproducing the table from its own numbers (``tests/energy/test_energy_report.py``) shows that
it *truncates* to the printed digits: all 27 EE cells and all five average energies match
truncation, while rounding would change 10 EE cells and four of the averages;
``rounding="truncate"`` prints that way. The same check shows that the SNN-RWKV columns cannot
come from eq. 5 with a firing rate <= 1: with ``T = 3`` (4) and ``l = 1`` they imply
``fr`` = 1.15-1.62 (1.08-1.25), e.g. ARC_test's 11165.8 pJ needs ``fr = 1.615``; the SpikeRWKV
columns imply 0.35 (3L), 0.49 (4L) and 0.57 (5L) on average.

The formula leaves out everything but the spike-encoded weighting: the dense layers, LoRA,
WKV, normalisation, nonlinearities, the head, the encoders' own neurons.

**Full count**: every operation of the forward pass, counted by hooks
(:mod:`spikelm.energy.counters`, which documents each convention), priced per kind
(:mod:`spikelm.energy.constants`), in pJ per token, per row and per layer, next to the same rows
with dense activations (the ANN). The total is priced from the summed operation counts, so the
test that the rows sum to it checks the per-row pricing. The spike-driven share is the energy of
spike-caused accumulates over the total.

Both render as markdown (``to_markdown``) and as JSON-ready dicts (``to_dict``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import SpikelmError
from ..evaluate.stream import forward_chunks
from ..markdown import md_table
from .constants import OP_KINDS, EnergyTable, energy_table
from .counters import Counts, EnergyCounter

log = logging.getLogger(__name__)

__all__ = [
    "RowEnergy",
    "LayerEnergy",
    "SiteRate",
    "FullReport",
    "full_report",
    "PaperEntry",
    "PaperCell",
    "PaperTable",
    "eq5",
    "implied_firing_rate",
    "paper_table",
    "paper_entry",
    "count_model",
    "method_name",
]


def _table(table: str | EnergyTable) -> EnergyTable:
    return table if isinstance(table, EnergyTable) else energy_table(table)


def _fmt(x: float, decimals: int, rounding: str = "round") -> str:
    """``x`` with ``decimals`` digits, rounded or truncated (the paper's Table 3 truncates)."""
    if rounding not in ("round", "truncate"):
        raise ValueError(f"rounding must be 'round' or 'truncate', got {rounding!r}")
    if rounding == "truncate":
        # the epsilon absorbs binary float error (2560 * 4.6 = 11775.999999999998)
        q = 10**decimals
        x = math.floor(x * q + 1e-6) / q
    return f"{x:.{decimals}f}"


def _count(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x - round(x)) < 1e-9:
        return f"{round(x):,}"
    return f"{x:,.1f}" if abs(x) >= 10 else f"{x:.3g}"


# =============================================================================== full count
@dataclass
class RowEnergy:
    """One row of the full count, per token: operations and pJ, spiking and dense (ANN)."""

    name: str
    layer: str
    kind: str
    c_in: int
    c_out: int
    ops: dict[str, float]
    ann_ops: dict[str, float]
    e_snn: float
    e_ann: float
    e_spike: float
    spike_driven: bool
    firing_rate: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "layer": self.layer, "kind": self.kind, "c_in": self.c_in, "c_out": self.c_out,
            "ops_per_token": self.ops, "ann_ops_per_token": self.ann_ops, "e_snn_pj": self.e_snn,
            "e_ann_pj": self.e_ann, "e_spike_driven_pj": self.e_spike, "spike_driven": self.spike_driven,
            "firing_rate": self.firing_rate,
        }


@dataclass
class LayerEnergy:
    layer: str
    e_snn: float
    e_ann: float
    e_spike: float

    @property
    def spike_share(self) -> float:
        return self.e_spike / self.e_snn if self.e_snn else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "e_snn_pj": self.e_snn, "e_ann_pj": self.e_ann,
                "e_spike_driven_pj": self.e_spike, "spike_share": self.spike_share}


@dataclass
class SiteRate:
    """Firing of one spiking site: an encoded or binary linear input, or a neuron group's output."""

    name: str
    kind: str  # "input" (spikes feeding a linear layer) or "neuron" (spikes a neuron group emits)
    T: int
    layers: int
    numel: int
    spikes: int
    firing_rate: float
    layer_rates: list[float]  # per spike layer: spikes / (values * T)
    flag_rate: float  # flag spikes per value (negative values)
    clipped_fraction: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class FullReport:
    """Every counted operation priced with ``table``, per token (see the module docstring)."""

    model: str
    tokens: int
    table: EnergyTable
    flag_acs: bool
    rows: list[RowEnergy]
    sites: list[SiteRate]
    ops_total: dict[str, float]  # per token, by kind, summed over all rows (spiking network)
    ann_ops_total: dict[str, float]
    uncounted: list[str] = field(default_factory=list)

    @property
    def total_snn(self) -> float:
        """pJ per token of the network as run, priced from the summed operation counts."""
        return self.table.energy(self.ops_total, self.flag_acs)

    @property
    def total_ann(self) -> float:
        return self.table.energy(self.ann_ops_total)

    @property
    def total_spike(self) -> float:
        """pJ per token of spike-driven accumulates."""
        acs = self.ops_total["ac"] + (self.ops_total["flag_ac"] if self.flag_acs else 0.0)
        return acs * self.table.e_ac

    @property
    def spike_share(self) -> float:
        return self.total_spike / self.total_snn if self.total_snn else 0.0

    @property
    def ee(self) -> float:
        """Energy efficiency of the whole model, ANN / as run."""
        return self.total_ann / self.total_snn if self.total_snn else float("nan")

    def layers(self) -> list[LayerEnergy]:
        out: dict[str, LayerEnergy] = {}
        for r in self.rows:
            le = out.setdefault(r.layer, LayerEnergy(r.layer, 0.0, 0.0, 0.0))
            le.e_snn += r.e_snn
            le.e_ann += r.e_ann
            le.e_spike += r.e_spike
        return list(out.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "tokens": self.tokens,
            "table": self.table.to_dict(),
            "flag_acs": self.flag_acs,
            "total": {
                "e_snn_pj": self.total_snn, "e_ann_pj": self.total_ann, "e_spike_driven_pj": self.total_spike,
                "spike_share": self.spike_share, "ee": self.ee,
                "ops_per_token": self.ops_total, "ann_ops_per_token": self.ann_ops_total,
            },
            "layers": [le.to_dict() for le in self.layers()],
            "rows": [r.to_dict() for r in self.rows],
            "sites": [s.to_dict() for s in self.sites],
            "uncounted": self.uncounted,
        }

    def to_markdown(self, rows: bool = True) -> str:
        t = self.table
        flag = ("flag spikes charged C_out ACs each" if self.flag_acs
                else "flag spikes select the sign of the accumulates (no AC of their own)")
        out = [
            f"Full count: {self.model}, {self.tokens:,} tokens, energy per token. Table {t.name}: "
            f"E_MAC {t.e_mac:.3g}, E_AC {t.e_ac:.3g}, mul {t.e_mult:.3g}, add {t.e_add:.3g}, "
            f"special {t.e_special:.3g} pJ; {flag}.",
            "",
        ]
        lay = [[le.layer, f"{le.e_ann:,.1f}", f"{le.e_snn:,.1f}", f"{le.e_spike:,.1f}",
                f"{100 * le.spike_share:.1f}%", f"{le.e_ann / le.e_snn:.2f}" if le.e_snn else "-"] for le in self.layers()]
        lay.append(["**total**", f"{self.total_ann:,.1f}", f"{self.total_snn:,.1f}", f"{self.total_spike:,.1f}",
                    f"{100 * self.spike_share:.1f}%", f"{self.ee:.2f}"])
        out.append(md_table(["layer", "ANN pJ", "spiking pJ", "spike-driven pJ", "spike-driven share", "EE"], lay))
        if rows:
            body = []
            for r in self.rows:
                o = r.ops
                body.append([r.name, r.kind, f"{r.c_in}x{r.c_out}" if r.c_out else "", _count(o["mac"]),
                             _count(o["ac"]), _count(o["flag_ac"]), _count(o["mul"]), _count(o["add"]), _count(o["special"]),
                             f"{r.e_ann:,.1f}", f"{r.e_snn:,.1f}", "" if r.firing_rate is None else f"{r.firing_rate:.4f}"])
            o = self.ops_total
            body.append(["**total**", "", "", _count(o["mac"]), _count(o["ac"]), _count(o["flag_ac"]), _count(o["mul"]),
                         _count(o["add"]), _count(o["special"]), f"{self.total_ann:,.1f}", f"{self.total_snn:,.1f}", ""])
            out += ["", "Operations per token, by row:", "",
                    md_table(["row", "kind", "C_in x C_out", "MAC", "AC", "flag AC", "mul", "add", "special",
                               "ANN pJ", "spiking pJ", "fr"], body, "lllrrrrrrrrr")]
        if self.sites:
            body = [[s.name, s.kind, str(s.T), str(s.layers), f"{s.firing_rate:.4f}",
                     " / ".join(f"{x:.3f}" for x in s.layer_rates), f"{s.flag_rate:.3f}", f"{100 * s.clipped_fraction:.3f}%"]
                    for s in self.sites]
            out += ["", "Firing rates (spikes per value per time step per spike layer):", "",
                    md_table(["site", "source", "T", "l", "fr", "fr per spike layer", "flag rate", "clipped"],
                              body, "llrrrlrr")]
        if self.uncounted:
            out += ["", "Not counted (unknown module types; their linear/norm/neuron children are): "
                    + ", ".join(self.uncounted)]
        return "\n".join(out)


def _site_rate(name: str, kind: str, st: Any) -> SiteRate:
    T, l, n = st.T, st.layers, st.numel
    per_layer = st.spikes_per_layer_step.sum(0).tolist()
    return SiteRate(
        name=name, kind=kind, T=T, layers=l, numel=n, spikes=st.layer_spikes, firing_rate=st.firing_rate,
        layer_rates=[c / (n * T) if n else 0.0 for c in per_layer],
        flag_rate=st.flag_spikes / n if n else 0.0, clipped_fraction=st.clipped / n if n else 0.0,
    )


def full_report(counts: Counts, table: str | EnergyTable = "45nm-fp32", *, flag_acs: bool = False) -> FullReport:
    """Price ``counts`` per token: rows, per-layer sums, totals from the summed counts, firing rates."""
    t = _table(table)
    tokens = counts.tokens
    if tokens <= 0:
        raise SpikelmError("no tokens were counted: run the model inside `with EnergyCounter(model)` first")
    rows: list[RowEnergy] = []
    sites: list[SiteRate] = []
    ops_total = {k: 0.0 for k in OP_KINDS}
    ann_total = {k: 0.0 for k in OP_KINDS}
    for r in counts.ordered():
        ops = {k: v / tokens for k, v in r.ops.items()}
        ann = {k: v / tokens for k, v in r.ann_ops.items()}
        for k in OP_KINDS:
            ops_total[k] += r.ops[k]
            ann_total[k] += r.ann_ops[k]
        e_spike = ops["ac"] * t.e_ac + (ops["flag_ac"] * t.e_ac if flag_acs else 0.0)
        fr = None
        if r.spikes is not None:
            fr = r.spikes.firing_rate
            if r.kind != "encode":  # an encoder's spikes are listed once, under the layer they drive
                sites.append(_site_rate(r.name, "neuron" if r.kind == "neuron" else "input", r.spikes))
        rows.append(RowEnergy(r.name, r.layer, r.kind, r.c_in, r.c_out, ops, ann, t.energy(ops, flag_acs),
                              t.energy(ann), e_spike, r.spike_driven, fr))
    return FullReport(
        model=counts.model, tokens=tokens, table=t, flag_acs=flag_acs, rows=rows, sites=sites,
        ops_total={k: v / tokens for k, v in ops_total.items()},
        ann_ops_total={k: v / tokens for k, v in ann_total.items()},
        uncounted=list(counts.uncounted),
    )


# =========================================================================== paper formula
def eq5(c_in: int, fr: float, T: int, layers: int, table: str | EnergyTable = "45nm-fp32") -> tuple[float, float]:
    """SpikeRWKV eq. (5): ``(E_ann, E_snn)`` in pJ = ``(C_in E_MAC, C_in fr T l E_AC)``."""
    t = _table(table)
    return c_in * t.e_mac, c_in * fr * T * layers * t.e_ac


def implied_firing_rate(e_snn: float, c_in: int, T: int, layers: int, e_ac: float) -> float:
    """The firing rate that makes eq. (5) give ``e_snn``: ``E_snn / (C_in T l E_AC)``."""
    return e_snn / (c_in * T * layers * e_ac)


@dataclass
class PaperEntry:
    """One measurement for the paper's table: a method's average firing rate on a task."""

    task: str
    method: str
    fr: float
    T: int
    layers: int


@dataclass
class PaperCell:
    fr: float
    e_snn: float
    ee: float
    T: int
    layers: int

    def to_dict(self) -> dict[str, Any]:
        return {"fr": self.fr, "e_snn_pj": self.e_snn, "ee": self.ee, "T": self.T, "layers": self.layers}


@dataclass
class PaperTable:
    """SpikeRWKV Table 3: rows = tasks and ``Avg``, columns = ANN then each method's E and EE."""

    c_in: int
    table: EnergyTable
    tasks: list[str]
    methods: list[str]
    cells: dict[tuple[str, str], PaperCell]

    @property
    def e_ann(self) -> float:
        return self.c_in * self.table.e_mac

    def average(self, method: str) -> PaperCell | None:
        """Mean energy over the tasks the method ran on; EE of the mean energy (as the paper)."""
        cells = [self.cells[(t, method)] for t in self.tasks if (t, method) in self.cells]
        if not cells:
            return None
        e = sum(c.e_snn for c in cells) / len(cells)
        fr = sum(c.fr for c in cells) / len(cells)
        return PaperCell(fr, e, self.e_ann / e if e else float("inf"), cells[0].T, cells[0].layers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "formula": "E_ann = C_in * E_MAC; E_snn = C_in * fr * T * l * E_AC; EE = E_ann / E_snn (SpikeRWKV eq. 5)",
            "c_in": self.c_in, "e_mac": self.table.e_mac, "e_ac": self.table.e_ac, "table": self.table.name,
            "e_ann_pj": self.e_ann,
            "methods": self.methods,
            "tasks": {t: {m: self.cells[(t, m)].to_dict() for m in self.methods if (t, m) in self.cells}
                      for t in self.tasks},
            "avg": {m: a.to_dict() for m in self.methods if (a := self.average(m)) is not None},
        }

    def to_markdown(self, rounding: str = "round", show_fr: bool = True) -> str:
        """Table 3's layout; ``rounding="truncate"`` prints digits as the paper does."""
        header = ["", "ANN E(pJ)"]
        for m in self.methods:
            header += [f"{m} E(pJ)", f"{m} EE"] + ([f"{m} fr"] if show_fr else [])
        body = []
        for label in [*self.tasks, "Avg"]:
            # the ANN energy is printed as the paper does: without decimals when it is whole
            line = [label, _fmt(self.e_ann, 0 if abs(self.e_ann - round(self.e_ann)) < 1e-6 else 1, rounding)]
            for m in self.methods:
                c = self.average(m) if label == "Avg" else self.cells.get((label, m))
                if c is None:
                    line += ["-", "-"] + (["-"] if show_fr else [])
                    continue
                line += [_fmt(c.e_snn, 1, rounding), _fmt(c.ee, 2, rounding)]
                if show_fr:
                    line.append(f"{c.fr:.4f}" + (" (>1: not a rate)" if c.fr > 1 else ""))
            body.append(line)
        t = self.table
        title = (f"Paper formula (SpikeRWKV eq. 5): C_in = {self.c_in}, E_MAC = {t.e_mac:.3g} pJ, "
                 f"E_AC = {t.e_ac:.3g} pJ ({t.name}); T, l per method: "
                 + (", ".join(f"{m} T={self._tl(m)[0]} l={self._tl(m)[1]}" for m in self.methods) or "no spiking method"))
        return title + "\n\n" + md_table(header, body)

    def _tl(self, method: str) -> tuple[int, int]:
        c = next(c for (t, m), c in self.cells.items() if m == method)
        return c.T, c.layers


def paper_table(entries: Sequence[PaperEntry], c_in: int, table: str | EnergyTable = "45nm-fp32",
                tasks: Sequence[str] = ()) -> PaperTable:
    """Lay ``entries`` out as the paper's Table 3 and compute eq. (5) for each.

    ``tasks``: row order (tasks of ``entries`` not named are appended); rows without entries show
    the ANN column alone.
    """
    t = _table(table)
    tasks = list(tasks)
    methods: list[str] = []
    cells: dict[tuple[str, str], PaperCell] = {}
    for e in entries:
        if e.task not in tasks:
            tasks.append(e.task)
        if e.method not in methods:
            methods.append(e.method)
        e_ann, e_snn = eq5(c_in, e.fr, e.T, e.layers, t)
        cells[(e.task, e.method)] = PaperCell(e.fr, e_snn, e_ann / e_snn if e_snn else float("inf"), e.T, e.layers)
    return PaperTable(c_in, t, tasks, methods, cells)


def paper_entry(counts: Counts, task: str, method: str) -> PaperEntry | None:
    """Eq. (5)'s inputs from a run: the firing rate pooled over every spike-driven linear input.

    ``fr`` = all layer spikes / (values * T * l) over the encoded (or binary) inputs of linear
    layers; ``T`` and ``l`` of those sites (the most common pair if they differ). None when no
    linear layer was driven by spikes (an ANN, or SpikeGPT whose spikes feed the residual stream).
    """
    sites = [r.spikes for r in counts.ordered() if r.spikes is not None and r.kind == "linear"]
    if not sites:
        return None
    pairs: dict[tuple[int, int], int] = {}
    for s in sites:
        pairs[(s.T, s.layers)] = pairs.get((s.T, s.layers), 0) + s.numel
    T, l = max(pairs, key=lambda k: pairs[k])
    if len(pairs) > 1:
        log.warning("energy: spike sites differ in (T, l) %s; eq. 5 uses the most common, T=%d l=%d", sorted(pairs), T, l)
    spikes = sum(s.layer_spikes for s in sites)
    slots = sum(s.numel * s.T * s.layers for s in sites)
    return PaperEntry(task, method, spikes / slots if slots else 0.0, T, l)


# ============================================================================ running a model
def count_model(model: nn.Module, tokens: Sequence[int], chunk: int = 512, counter: EnergyCounter | None = None) -> Counts:
    """Run ``model`` over ``tokens`` (one stream, state carried, chunks of ``chunk``) and count."""
    ids = np.asarray(tokens, dtype=np.int64).reshape(1, -1)
    if ids.size == 0:
        raise SpikelmError("no tokens to run the model on")
    ec = counter or EnergyCounter(model)
    with ec, torch.no_grad():
        for _ in forward_chunks(model, ids, chunk):
            pass
    return ec.counts


def method_name(model: nn.Module, preset: str) -> str:
    if preset:
        return preset
    enc = getattr(model, "encoding", None)
    if enc is not None:
        return f"{enc.encoding} T={enc.T} l={enc.layers}"
    return type(model).__name__
