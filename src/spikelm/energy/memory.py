"""Memory energy per token: weights read, activations written and read, recurrent state.

Lemaire et al. (ICONIP 2022) write a network's energy as operations + addressing + memory;
Dampfhoffer et al. (TETCI 2023) show that once memory is counted, spiking networks compete only at
low spike rates. The counters (:mod:`.counters`) give the operations; this module adds memory,
priced by a named :class:`MemoryModel`:

* ``none``: compute only (both papers' convention, and the full count's figure);
* ``sram``: weights resident on chip; every access priced by the size of the array that holds it
  (Horowitz 2014: 10 / 20 / 100 pJ per 64-bit word for 8 KB / 32 KB / 1 MB; one array per layer);
* ``dram``: weights streamed from DRAM once per batch of ``B`` tokens (1.3 nJ per 64-bit word, the
  low end of Horowitz's 1.3-2.6 nJ); batch 1 re-reads every weight for every token. Activations
  and state stay on chip (SRAM, priced by their per-layer size).

What is read per token (bytes; ``w`` = weight bits / 8, ``a`` = activation bits / 8):

* **weights**: every parameter and quantised matrix once per batch, ``numel * w / B``, except the
  embedding (one row per token, gathered: ``C * w``, no batch reuse); the vectors (norms, mixes,
  decays) are charged at ``w`` too, on both sides (under 1% of the bytes). A *spike-driven* linear
  layer fetches only the weight columns of inputs that spiked (a silent input needs no read): with
  ``p`` the measured fraction of its inputs that emit at least one spike over the T steps and l
  layers, a batch of ``B`` tokens fetches a column with probability ``1 - (1 - p)^B`` (tokens
  taken as independent; ``p`` itself at ``B = 1``). The sign flag fetches nothing. The
  zero-skipping ANN (``ann_skips_zeros``) fetches the columns of its nonzero inputs at the same
  sites: the same fraction.
* **activations** of every linear layer (bare LoRA matmuls included): its input read and its
  output written. A spike-driven input is read as ``T * l`` spike bits plus one sign bit per value
  (binary {0, 1} inputs: 1 bit), the ANN's input at those sites at ``ann_site_act_bits`` (the
  equal-information ANN's code bits, every value read whether zero or not, as the spike bits
  are); every other activation and every output at ``a`` bytes. Elementwise intermediates are
  taken to stay in registers (not counted).
* **state**: the recurrent state the model carries from token to token (``initial_state``: WKV
  matrices, token-shift vectors, SpikeGPT's LIF membranes), read and written once per token, in
  the dtype the model keeps it. An encoder's IF membranes restart every token (registers: not
  counted).

Not counted: addressing/control logic, interconnect, leakage, the write of weights (inference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import SpikelmError
from ..markdown import md_table
from ..models.quantized import QuantizedMatrix
from .constants import DRAM_PJ_PER_64B, SRAM_PJ_PER_64B
from .counters import Counts, _layer_of

__all__ = ["MEMORY_KINDS", "MemoryModel", "LayerMemory", "RowMemory", "MemoryReport", "memory_report", "sram_pj_per_64b",
           "fetched_fraction", "weight_numels"]

MEMORY_KINDS = ("none", "sram", "dram")


def sram_pj_per_64b(array_bytes: float) -> float:
    """pJ per 64-bit SRAM read for an array of ``array_bytes`` (Horowitz 2014; largest tier beyond 1 MB)."""
    for size, pj in SRAM_PJ_PER_64B:
        if array_bytes <= size:
            return pj
    return SRAM_PJ_PER_64B[-1][1]


@dataclass(frozen=True)
class MemoryModel:
    """Where weights live and how often they are read: ``none`` | ``sram`` | ``dram`` (batch ``batch``)."""

    kind: str = "none"
    batch: int = 1

    def __post_init__(self) -> None:
        if self.kind not in MEMORY_KINDS:
            raise SpikelmError(f"unknown memory model {self.kind!r}; use --memory {' | '.join(MEMORY_KINDS)}")
        if self.batch < 1:
            raise SpikelmError(f"--batch must be >= 1 (tokens that share one weight read), got {self.batch}")

    @property
    def label(self) -> str:
        return "dram B=%d" % self.batch if self.kind == "dram" else self.kind

    def weight_pj_per_byte(self, array_bytes: float) -> float:
        if self.kind == "none":
            return 0.0
        return (DRAM_PJ_PER_64B if self.kind == "dram" else sram_pj_per_64b(array_bytes)) / 8.0

    def onchip_pj_per_byte(self, array_bytes: float) -> float:
        return 0.0 if self.kind == "none" else sram_pj_per_64b(array_bytes) / 8.0


@dataclass
class LayerMemory:
    """Bytes per token of one layer (``blocks.i``, ``emb``, ``head``, ...), spiking and ANN, and their pJ."""

    layer: str
    weight_bytes: float = 0.0
    act_bytes: float = 0.0
    state_bytes: float = 0.0
    ann_weight_bytes: float = 0.0
    ann_act_bytes: float = 0.0
    e_snn: float = 0.0
    e_ann: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class MemoryReport:
    model: MemoryModel
    weight_bits: int
    act_bits: int
    ann_weight_bits: int
    ann_act_bits: int
    layers: list[LayerMemory] = field(default_factory=list)
    rows: list[RowMemory] = field(default_factory=list)  # the spike-driven linear rows

    def total(self, attr: str) -> float:
        return sum(getattr(le, attr) for le in self.layers)

    @property
    def e_snn(self) -> float:
        return self.total("e_snn")

    @property
    def e_ann(self) -> float:
        return self.total("e_ann")

    def to_dict(self) -> dict[str, Any]:
        keys = ("weight_bytes", "act_bytes", "state_bytes", "ann_weight_bytes", "ann_act_bytes", "e_snn", "e_ann")
        return {"memory": self.model.kind, "batch": self.model.batch, "weight_bits": self.weight_bits,
                "act_bits": self.act_bits, "ann_weight_bits": self.ann_weight_bits, "ann_act_bits": self.ann_act_bits,
                "layers": [le.to_dict() for le in self.layers], "total": {k: self.total(k) for k in keys}}

    def to_markdown(self) -> str:
        body = [[le.layer, f"{le.ann_weight_bytes:,.1f}", f"{le.weight_bytes:,.1f}", f"{le.ann_act_bytes:,.1f}",
                 f"{le.act_bytes:,.1f}", f"{le.state_bytes:,.1f}", f"{le.e_ann:,.1f}", f"{le.e_snn:,.1f}"]
                for le in self.layers]
        body.append(["**total**"] + [f"{self.total(k):,.1f}" for k in (
            "ann_weight_bytes", "weight_bytes", "ann_act_bytes", "act_bytes", "state_bytes", "e_ann", "e_snn")])
        title = (f"Memory per token ({self.model.label}): weights {self.weight_bits}-bit (ANN {self.ann_weight_bits}), "
                 f"activations {self.act_bits}-bit (ANN {self.ann_act_bits}); bytes and pJ.")
        return title + "\n\n" + md_table(["layer", "ANN weight B", "weight B", "ANN act B", "act B", "state B",
                                          "ANN pJ", "spiking pJ"], body)


def _state_bytes(model: nn.Module) -> dict[str, float]:
    """Bytes of the carried state per layer (``blocks.i``), from ``model.initial_state(1)``."""
    init = getattr(model, "initial_state", None)
    if not callable(init):
        return {}
    with torch.no_grad():
        state = init(1)
    out: dict[str, float] = {}

    def size(x: Any) -> int:
        if isinstance(x, torch.Tensor):
            return x.numel() * x.element_size()
        if isinstance(x, (tuple, list)):
            return sum(size(y) for y in x)
        return 0

    n_layer = len(getattr(model, "blocks", ()))
    if isinstance(state, (list, tuple)) and n_layer and len(state) == n_layer:
        for i, s in enumerate(state):
            out[f"blocks.{i}"] = float(size(s))
    else:
        out["model"] = float(size(state))
    return out


def fetched_fraction(p_active: float, batch: int) -> float:
    """Fraction of a spike-driven layer's weight columns read per batch of ``batch`` tokens, when a
    fraction ``p_active`` of its inputs is nonzero (tokens taken as independent): ``1 - (1 - p)^B``."""
    p = min(1.0, max(0.0, p_active))
    return 1.0 - (1.0 - p) ** batch


@dataclass
class RowMemory:
    """Memory of one spike-driven linear row, per token (what the break-even rate scales).

    ``weight_pj``: its weights read in full (``numel * bits / 8 / B`` bytes at its array's price);
    the spiking network reads ``fetched_fraction(p_active, B)`` of that. ``act_pj``: its input and
    output activations. ``ann_*``: the same for the ANN side as asked (``ann_skips_zeros``).
    """

    name: str
    layer: str
    p_active: float
    weight_pj: float
    act_pj: float
    ann_weight_pj: float
    ann_act_pj: float

    def snn_pj(self, batch: int, activity: float = 1.0) -> float:
        return self.weight_pj * fetched_fraction(activity * self.p_active, batch) + self.act_pj

    @property
    def ann_pj(self) -> float:
        return self.ann_weight_pj + self.ann_act_pj


def weight_numels(model: nn.Module) -> list[tuple[str, int]]:
    """(name, elements) of every stored parameter and quantised matrix (under the parameter's name)."""
    out = [(n, p.numel()) for n, p in model.named_parameters()]
    out += [(n, m.numel()) for n, m in model.named_modules() if isinstance(m, QuantizedMatrix)]
    return out


def memory_report(model: nn.Module, counts: Counts, memory: MemoryModel | str = "none", *, weight_bits: int = 32,
                  act_bits: int = 32, ann_weight_bits: int | None = None, ann_act_bits: int | None = None,
                  ann_site_act_bits: int | None = None, ann_skips_zeros: bool = False,
                  activity: float = 1.0) -> MemoryReport:
    """Memory bytes and pJ per token of ``model`` as counted in ``counts`` (see the module docstring).

    ``ann_site_act_bits``: the ANN's input width at the spike sites (the inputs that are spikes in
    the spiking network; default ``ann_act_bits``), e.g. the equal-information ANN's code bits.
    ``ann_skips_zeros``: the ANN reads only the weight columns of nonzero inputs at those sites,
    as the spiking network does (the zero-skipping twin). ``activity``: the spiking network's
    fraction of active inputs scaled by this factor (1: as measured; the break-even rate).
    """
    mem = memory if isinstance(memory, MemoryModel) else MemoryModel(memory)
    if counts.tokens <= 0:
        raise SpikelmError("no tokens were counted: run the model inside `with EnergyCounter(model)` first")
    ann_weight_bits = weight_bits if ann_weight_bits is None else ann_weight_bits
    ann_act_bits = act_bits if ann_act_bits is None else ann_act_bits
    site_bits = ann_act_bits if ann_site_act_bits is None else ann_site_act_bits
    B, tok = mem.batch, counts.tokens
    layers: dict[str, LayerMemory] = {}
    # per spike-driven row: [weight bytes in full, act bytes, ANN weight bytes, ANN act bytes, p]
    rows: dict[str, list[float]] = {}

    def layer(name: str) -> LayerMemory:
        return layers.setdefault(name, LayerMemory(name))

    embeddings = {n for n, m in model.named_modules() if isinstance(m, nn.Embedding)}
    array: dict[str, float] = {}  # bytes of each layer's weight array (what an SRAM access is priced by)
    for pname, numel in weight_numels(model):
        owner, _, leaf = pname.rpartition(".")
        le = layer(_layer_of(pname))
        array[le.layer] = array.get(le.layer, 0.0) + numel * ann_weight_bits / 8
        if owner in embeddings:  # one row per token, gathered (no batch reuse)
            n = numel // max(1, model.get_submodule(owner).num_embeddings)
            le.weight_bytes += n * weight_bits / 8
            le.ann_weight_bytes += n * ann_weight_bits / 8
            continue
        row = counts.rows.get(pname) or (counts.rows.get(owner) if leaf == "weight" else None)
        frac = ann_frac = 1.0
        if row is not None and row.kind == "linear" and row.spikes is not None and row.spikes.numel:
            p_active = row.active / row.spikes.numel
            frac = fetched_fraction(activity * p_active, B)
            if ann_skips_zeros:
                ann_frac = fetched_fraction(p_active, B)
            r = rows.setdefault(row.name, [0.0, 0.0, 0.0, 0.0, min(1.0, p_active)])
            r[0] += numel * weight_bits / 8 / B
            r[2] += numel * ann_frac * ann_weight_bits / 8 / B
        le.weight_bytes += numel * frac * weight_bits / 8 / B
        le.ann_weight_bytes += numel * ann_frac * ann_weight_bits / 8 / B

    for r in counts.ordered():
        if r.kind != "linear" or not (r.c_in and r.c_out):
            continue
        macs = r.ann_ops["mac"] / tok  # per token
        n_in, n_out = macs / r.c_out, macs / r.c_in
        le = layer(r.layer)
        if r.spikes is not None:
            in_bits = r.spikes.T * r.spikes.layers + (1 if r.encoded else 0)
            ann_in_bits = site_bits
        else:
            in_bits = ann_in_bits = act_bits
        act = n_in * in_bits / 8 + n_out * act_bits / 8
        ann_act = n_in * (ann_in_bits if r.spikes is not None else ann_act_bits) / 8 + n_out * ann_act_bits / 8
        le.act_bytes += act
        le.ann_act_bytes += ann_act
        if r.name in rows:
            rows[r.name][1] += act
            rows[r.name][3] += ann_act

    for name, nbytes in _state_bytes(model).items():
        layer(name).state_bytes += 2 * nbytes  # read, then written back

    prices: dict[str, tuple[float, float]] = {}
    for le in layers.values():
        w_price = mem.weight_pj_per_byte(array.get(le.layer, 0.0))
        act_price = mem.onchip_pj_per_byte(max(le.ann_act_bytes, le.act_bytes))
        st_price = mem.onchip_pj_per_byte(le.state_bytes / 2)
        prices[le.layer] = (w_price, act_price)
        le.e_snn = le.weight_bytes * w_price + le.act_bytes * act_price + le.state_bytes * st_price
        le.e_ann = le.ann_weight_bytes * w_price + le.ann_act_bytes * act_price + le.state_bytes * st_price
    row_mem = []
    for name, (w, a, aw, aa, p) in rows.items():
        w_price, act_price = prices[counts.rows[name].layer]
        row_mem.append(RowMemory(name, counts.rows[name].layer, p, w * w_price, a * act_price, aw * w_price, aa * act_price))
    return MemoryReport(mem, weight_bits, act_bits, ann_weight_bits, ann_act_bits, list(layers.values()), row_mem)
