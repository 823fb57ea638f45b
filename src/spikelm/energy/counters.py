"""Count every arithmetic operation of a model's forward pass, from outside, by hooks.

``with EnergyCounter(model) as ec: model(idx)`` registers forward (pre-)hooks, reads shapes and
spike-encoder inputs, and leaves the model's outputs bit-identical (the hooks return nothing and
never touch a tensor the model uses). One exception: a plain RWKV-6 block decoding one token on
the CPU runs as one compiled step only where no hook is set, so there a counted step agrees with
an uncounted one to float32 rounding (its modules' arithmetic), not bit for bit. ``ec.counts``
holds one :class:`Row` per counted piece of work with the operations that actually ran (``ops``)
and what the same rows would cost with dense activations, i.e. in the ANN (``ann_ops``);
``full_report(ec.counts)`` (:mod:`.report`) prices them (:mod:`spikelm.energy.report`).

Operation kinds (priced in :mod:`spikelm.energy.constants`): ``mac`` dense multiply-accumulate,
``ac`` spike-driven accumulate, ``flag_ac`` accumulates a sign-flag spike would cost if it had
its own synaptic pass, ``mul`` / ``add`` elementwise (a comparison, ReLU or clamp is one ``add``),
``special`` exp / tanh / sigmoid / division / reciprocal square root.

Linear layers (every ``nn.Linear``, and the LoRA matmuls of RWKV-6 that are plain ``@``)
------------------------------------------------------------------------------------------
Dense cost per token: ``C_in * C_out`` MACs. When the input is spikes the layer costs accumulates
instead, read as follows (SpikeRWKV sec. 3.3-3.4, eq. 3-5):

* **Multi-head spike encoding** (``SpikingLinear`` and the ``maa_in`` / ``decay_in`` encoders of a
  converted RWKV-6): value ``x = sign * s / T * sum_j sum_i w_i * spike[j, i]``. One spike of
  layer ``i`` at step ``j`` on input channel ``c`` adds column ``c`` of the weight, pre-scaled by
  ``w_i`` (a power of two: a shift, or one stored copy per layer), to the ``C_out`` outputs:
  ``C_out`` ACs. ``s`` and ``1/T`` fold into the weights (per tensor or per input column), so they
  cost nothing per token. Hence ``ACs = layer spikes * C_out``, over all steps and layers.
* **The sign flag** (sec. 3.3: it "determines the nature of the input value", replacing
  inhibitory synapses) selects whether the accumulates of that channel's spikes add or subtract:
  it costs no accumulate of its own. Flag spikes are counted anyway (``flag_ac`` = flag spikes *
  ``C_out``), and a report may charge them (``flag_acs=True``: the reading in which a negative
  value needs a separate pass through the synapses, an upper bound).
* **Binary inputs** (any other ``nn.Linear`` whose input is exactly {0, 1}, e.g. spikes from an
  IF/LIF neuron): ``ACs = nonzero inputs * C_out``, firing rate = nonzero / inputs (T = l = 1).
  The check looks at 256 values first and scans the whole input only if those are binary.
* A bias adds ``C_out`` adds per token in either case.

Spike counts of encoders are the exact closed form's (the counts of ``mhse_closed_form(...,
stats=True)``, which the conversion tests prove equal to the step-by-step IF cascade). A hook on
the encoder's observation point reads its integer levels, whose bits are the spikes, as it
computes them (:class:`~.spike_counts.EncoderObservation`); where it shows none
(more steps, the simulation) they are recomputed from its input (:func:`encoder_stats`). The
model's own forward is left alone.

Everything else, per token: the op tables the models declare next to their blocks
------------------------------------------------------------------------------------------
A block with arithmetic of its own (token shift and mixes, LoRA matmuls, the WKV recurrence,
gates, residual adds) declares it in ``energy_ops()`` (:mod:`spikelm.models.optable`; see the
docstrings of ``energy_ops`` in ``models/rwkv4.py``, ``rwkv6.py``, ``rwkv7.py``, ``spikegpt.py``
for each block's conventions). The counter is generic over them: a pre-hook (``ENERGY_WHEN =
"post"``: a post-hook) adds each row's per-token ops times the tokens of the block's input; a bare
matmul row whose ``encoder`` point holds a spike encoder keeps only its dense counterpart (its
accumulates come from the encoder's spikes); a row with ``spike_inputs`` costs one accumulate per
spike those children emit (dense counterpart: the row's ops).

* ``LayerNorm`` / ``GroupNorm`` per element: mean and centring 2 add, variance 1 MAC,
  normalisation 1 mul, affine 1 MAC; per normalised group: 2 mul (1/n), 1 add (eps),
  1 special (rsqrt).
* Spiking neurons (encoders, IF/LIF, or any module with ``energy_neuron_ops(numel, spikes)``): an encoder value costs a sign test and a clip (2 add), and
  per step a charge (1 add) and ``l`` threshold tests (l add), plus a soft-reset subtraction per
  spike; ``|x| / s`` needs no multiplication (the scale folds into the thresholds ``s w_i``). LIF
  (SpikeGPT eq. 13): charge 1 mul + 2 add (+1 add if ``v_reset != 0``), fire 1 add, hard reset is
  a select; IF: charge and fire 2 add, soft reset 1 add per spike. A binary embedding spike: 1 add.
* Embedding look-ups and the memory traffic of weights are not arithmetic and cost 0 here (both
  papers exclude memory); the embedding appears as a row so nothing is hidden.

Modules of any other type are listed in ``counts.uncounted`` (and logged): only their linear,
norm and neuron children are counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from ..models.optable import ROW_KINDS, OpRow
from ..models.quantized import QuantizedMatrix
from ..spiking.encoding import SpikeStats
from ..spiking.layers import SpikeEncoder, SpikingLinear
from ..spiking.neurons import IFNeuron, LIFNeuron, SpikingNeuron
from .constants import OP_KINDS
from .spike_counts import EncoderObservation, _binary_stats, encoder_stats, is_binary

log = logging.getLogger(__name__)

__all__ = ["Row", "Counts", "EnergyCounter", "is_binary", "encoder_stats", "ROW_KINDS"]

def _zero_ops() -> dict[str, int]:
    return {k: 0 for k in OP_KINDS}


def _layer_of(name: str) -> str:
    """``blocks.3.att.key`` -> ``blocks.3``; ``head`` -> ``head``; the root -> ``model``."""
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "blocks":
        return ".".join(parts[:2])
    return parts[0] or "model"


@dataclass
class Row:
    """Operations of one piece of work, summed over every forward call seen.

    ``rows``: token vectors processed (B * T summed over calls). ``ops``: what ran; ``ann_ops``:
    the dense counterpart (spike-driven accumulates replaced by the layer's dense MACs, no encoder
    or neuron work). ``spikes``: spike counts of the row's input (linear rows fed by spikes) or
    output (neuron rows), as :class:`~spikelm.spiking.encoding.SpikeStats`.
    """

    name: str
    layer: str
    kind: str
    c_in: int = 0
    c_out: int = 0
    rows: int = 0
    ops: dict[str, int] = field(default_factory=_zero_ops)
    ann_ops: dict[str, int] = field(default_factory=_zero_ops)
    spikes: SpikeStats | None = None
    first_seen: int | None = None
    # spike-driven inputs: values that fetched their weight column (at least one spike over the
    # T steps and l layers; flags alone fetch nothing), and whether they came from an MHSE/rate
    # encoder (spike trains plus a sign flag) rather than a binary {0, 1} input
    active: int = 0
    encoded: bool = False
    # the part of ``ops`` that is proportional to the spikes (accumulates, flag accumulates,
    # soft-reset subtractions): what scales with the firing rate (the break-even rate); and, for a
    # spike-driven linear row fed by an encoder, the name of that encoder's row
    spike_ops: dict[str, int] = field(default_factory=_zero_ops)
    encode_row: str = ""

    @property
    def spike_driven(self) -> bool:
        """True when some of this row's work was accumulates caused by spikes."""
        return self.ops["ac"] > 0 or (self.spikes is not None and self.kind == "linear")

    def add(self, ops: dict[str, int] | None = None, ann: dict[str, int] | None = None) -> None:
        for k, n in (ops or {}).items():
            self.ops[k] += int(n)
        for k, n in (ann or {}).items():
            self.ann_ops[k] += int(n)

    def add_spike_ops(self, ops: dict[str, int]) -> None:
        """Add ``ops`` that spikes caused, to ``ops`` and to ``spike_ops``."""
        self.add(ops)
        for k, n in ops.items():
            self.spike_ops[k] += int(n)

    def add_spikes(self, st: SpikeStats) -> None:
        self.spikes = st if self.spikes is None else self.spikes + st

    def merged(self, other: Row) -> Row:
        out = Row(self.name, self.layer, self.kind, self.c_in or other.c_in, self.c_out or other.c_out,
                  self.rows + other.rows, dict(self.ops), dict(self.ann_ops), self.spikes,
                  self.first_seen if self.first_seen is not None else other.first_seen,
                  self.active + other.active, self.encoded or other.encoded, dict(self.spike_ops),
                  self.encode_row or other.encode_row)
        out.add(other.ops, other.ann_ops)
        for k, n in other.spike_ops.items():
            out.spike_ops[k] += n
        if other.spikes is not None:
            out.add_spikes(other.spikes)
        return out


@dataclass
class Counts:
    """All rows of one counter (or several merged), the number of tokens, and what was not counted."""

    rows: dict[str, Row] = field(default_factory=dict)
    tokens: int = 0
    uncounted: list[str] = field(default_factory=list)
    model: str = ""

    def ordered(self) -> list[Row]:
        """Rows in the order the forward pass first reached them (rows never reached last)."""
        big = len(self.rows) + 10**9
        return sorted(self.rows.values(), key=lambda r: (big if r.first_seen is None else r.first_seen))

    def __add__(self, other: Counts) -> Counts:
        rows = dict(self.rows)
        for name, r in other.rows.items():
            rows[name] = rows[name].merged(r) if name in rows else r
        return Counts(rows, self.tokens + other.tokens, sorted(set(self.uncounted) | set(other.uncounted)),
                      self.model or other.model)

    def spiking_rows(self) -> list[Row]:
        """Rows that carry spike counts (spike-driven linears, encoders' targets, neurons)."""
        return [r for r in self.ordered() if r.spikes is not None]


def _spike_output(out: Any) -> Tensor | None:
    """The spike tensor of a neuron's output: the tensor itself or the first of a tuple."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], Tensor):
        return out[0]
    return None


def _norm_ops(n_elements: int, n_groups: int, affine: bool) -> dict[str, int]:
    return {"add": 2 * n_elements + n_groups, "mac": n_elements * (2 if affine else 1),
            "mul": n_elements + 2 * n_groups, "special": n_groups}


def _neuron_ops(mod: nn.Module, numel: int, spikes: int) -> dict[str, int]:
    if callable(getattr(mod, "energy_neuron_ops", None)):
        return mod.energy_neuron_ops(numel, spikes)
    if isinstance(mod, LIFNeuron):
        extra = 1 if mod.v_reset != 0.0 else 0
        add = numel * (3 + extra) + (spikes if mod.reset_mode == "subtract" else 0)
        return {"mul": numel, "add": add}
    if isinstance(mod, IFNeuron):
        return {"add": 2 * numel + spikes}
    return {"mul": numel, "add": 3 * numel}  # another leaky neuron: LIF-like


class EnergyCounter:
    """Context manager that counts operations, spikes and accumulates of ``model`` by hooks.

    ``check_binary``: test the input of every plain ``nn.Linear`` for {0, 1} values (spike-driven
    when so). Use as ``with EnergyCounter(model) as ec: model(idx)``; hooks are removed on exit,
    and the counts stay readable (``ec.counts``; :func:`.report.full_report` prices them). Several forward calls add up.
    """

    def __init__(self, model: nn.Module, *, check_binary: bool = True) -> None:
        self.model = model
        self.check_binary = check_binary
        self.counts = Counts(model=type(model).__name__)
        self._handles: list[Any] = []
        self._seen = 0
        self._scratch: Tensor | None = None  # working memory of encoder_counts, reused across calls

    # ------------------------------------------------------------------ context
    def __enter__(self) -> EnergyCounter:
        self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def attach(self) -> EnergyCounter:
        if self._handles:
            raise RuntimeError("EnergyCounter is already attached")
        self._handles.append(self.model.register_forward_pre_hook(self._count_tokens, with_kwargs=True))
        for name, mod in self.model.named_modules():
            if not self._attach(name, mod):
                what = f"{name or '(root)'} ({type(mod).__name__})"
                self.counts.uncounted.append(what)
                log.warning("energy: operations of %s are not counted (unknown module type); "
                            "its linear/norm/neuron children are", what)
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._scratch = None

    # ------------------------------------------------------------------ rows
    def _row(self, name: str, kind: str, c_in: int = 0, c_out: int = 0) -> Row:
        row = self.counts.rows.get(name)
        if row is None:
            row = Row(name, _layer_of(name), kind, c_in, c_out)
            self.counts.rows[name] = row
        elif row.kind != kind:
            raise RuntimeError(f"energy row {name!r} is both {row.kind} and {kind}")
        return row

    def _touch_in_order(self, prefix: str, suffixes: Sequence[str]) -> None:
        """Mark the rows of a module's children in forward order (the report lists rows that way)."""
        for s in suffixes:
            row = self.counts.rows.get(f"{prefix}.{s}")
            if row is not None:
                self._touch(row)

    def _touch(self, row: Row, n_rows: int = 0) -> None:
        if row.first_seen is None:
            row.first_seen = self._seen
            self._seen += 1
        row.rows += n_rows

    def _scratch_for(self, x: Tensor) -> Tensor:
        """A float32 buffer of at least 2 * x.numel() on x's device, kept for the next call."""
        need = 2 * x.numel()
        if self._scratch is None or self._scratch.numel() < need or self._scratch.device != x.device:
            self._scratch = torch.empty(need, dtype=torch.float32, device=x.device)
        return self._scratch

    def _pre(self, mod: nn.Module, fn: Callable[[nn.Module, tuple], None]) -> None:
        def hook(m: nn.Module, args: tuple) -> None:
            with torch.no_grad():
                fn(m, args)
        self._handles.append(mod.register_forward_pre_hook(hook))

    def _post(self, mod: nn.Module, fn: Callable[[nn.Module, tuple, Any], None]) -> None:
        def hook(m: nn.Module, args: tuple, out: Any) -> None:
            with torch.no_grad():
                fn(m, args, out)
        self._handles.append(mod.register_forward_hook(hook))

    def _count_tokens(self, mod: nn.Module, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else next((v for v in kwargs.values() if isinstance(v, Tensor)), None)
        if isinstance(x, Tensor):
            # token ids (B, T), or for a bare layer one token per input vector
            self.counts.tokens += x.numel() if not x.is_floating_point() else x.numel() // max(1, x.shape[-1])

    # ------------------------------------------------------------------ dispatch
    def _attach(self, name: str, mod: nn.Module) -> bool:
        """Register the hooks that count ``mod``'s own work; False for an unknown module type."""
        if isinstance(mod, SpikeEncoder):
            self._attach_encoder(name, mod)
        elif isinstance(mod, nn.Linear):
            self._attach_linear(name, mod)
        elif isinstance(mod, (nn.LayerNorm, nn.GroupNorm)):
            self._attach_norm(name, mod)
        elif isinstance(mod, nn.Embedding):
            row = self._row(name, "embedding", mod.num_embeddings, mod.embedding_dim)
            self._pre(mod, lambda m, a: self._touch(row, a[0].numel()))
        elif callable(getattr(mod, "energy_ops", None)):
            self._attach_table(name, mod)
        elif callable(getattr(mod, "energy_neuron_ops", None)) or isinstance(mod, SpikingNeuron):
            self._attach_neuron(name, mod)
        elif mod is self.model or isinstance(mod, (nn.Identity, nn.Dropout, nn.ModuleList, nn.Sequential,
                                                   QuantizedMatrix)):
            pass  # no arithmetic of their own (a quantised matrix is storage, used by its owner's rows)
        else:
            return False
        return True

    # ------------------------------------------------------------------ per type
    def _elementwise(self, row: Row, x: Tensor, **per_channel: float) -> None:
        """Add ``per_channel[kind] * C`` operations per token row of ``x`` (..., C), same in the ANN."""
        C = x.shape[-1]
        n = x.numel() // max(1, C)
        self._touch(row, n)
        ops = {k: round(v * C) * n for k, v in per_channel.items()}
        row.add(ops, ops)

    def _attach_linear(self, name: str, mod: nn.Linear) -> None:
        row = self._row(name, "linear", mod.in_features, mod.out_features)
        encoded = isinstance(mod, SpikingLinear)

        def fn(m: nn.Linear, args: tuple) -> None:
            x = args[0]
            n = x.numel() // m.in_features
            self._touch(row, n)
            dense = n * m.in_features * m.out_features
            bias = {"add": n * m.out_features} if m.bias is not None else {}
            row.add(bias, {"mac": dense, **bias})
            if encoded:
                return  # accumulates come from the encoder's hook
            if self.check_binary and is_binary(x):
                st = _binary_stats(x)
                row.add_spike_ops({"ac": int(st.spikes_per_layer_step.sum()) * m.out_features})
                row.add_spikes(st)
                row.active += int(st.spikes_per_layer_step.sum())  # each spike fetches its column
            else:
                row.add({"mac": dense})

        self._pre(mod, fn)

    def _attach_encoder(self, name: str, enc: nn.Module) -> None:
        owner_name, _, leaf = name.rpartition(".")
        owner = self.model.get_submodule(owner_name)
        if leaf == "encoder" and isinstance(owner, SpikingLinear):  # the input encoder of a spiking linear
            site, target_name, c_out = owner_name, owner_name, int(owner.out_features)
        elif (lora := _encoded_matmul(owner, leaf)) is not None:  # a bare matmul's input (RWKV-6 maa_in, ...)
            site, target_name = name, f"{owner_name}.{lora[0]}" if owner_name else lora[0]
            c_out = lora[1].c_out
        else:
            site, target_name, c_out = name, name, 0
            log.warning("energy: encoder %s feeds no known linear layer; its spikes are counted, "
                        "its accumulates are not", name)
        channels = enc.scale.numel() if enc.scale.dim() else 0
        target = self._row(target_name, "linear", channels, c_out)
        enc_row = self._row(f"{site}.encode", "encode", channels, 0)

        obs = EncoderObservation(enc, self._scratch_for)

        def fn(e: nn.Module, args: tuple, _out: Any) -> None:
            x = args[0]
            st, active = obs.finish()
            n = x.numel() // max(1, x.shape[-1])
            T, l = st.T, st.layers
            spikes = st.layer_spikes
            self._touch(enc_row, n)
            enc_row.c_in = x.shape[-1]
            enc_row.add({"add": st.numel * (2 + T + T * l)})
            enc_row.add_spike_ops({"add": spikes})  # one soft-reset subtraction per spike
            enc_row.add_spikes(st)
            self._touch(target)
            target.add_spike_ops({"ac": spikes * c_out, "flag_ac": st.flag_spikes * c_out})
            target.encode_row = enc_row.name
            target.add_spikes(st)
            target.active += active
            target.encoded = True

        # the encoder's observation point shows what it computed (spikelm.spiking.layers.SpikeEncoder)
        self._pre(enc, lambda e, args: obs.start(args[0]))
        if isinstance(getattr(enc, "levels", None), nn.Module):
            self._post(enc.levels, obs.levels)
        self._post(enc, fn)

    def _attach_norm(self, name: str, mod: nn.LayerNorm | nn.GroupNorm) -> None:
        row = self._row(name, "norm")
        if isinstance(mod, nn.GroupNorm):
            def fn(m: nn.GroupNorm, args: tuple) -> None:
                x = args[0]  # (B*T, A)
                n = x.numel() // max(1, m.num_channels)
                self._touch(row, n)
                ops = _norm_ops(x.numel(), n * m.num_groups, m.affine)
                row.add(ops, ops)
        else:
            def fn(m: nn.LayerNorm, args: tuple) -> None:
                x = args[0]
                width = 1
                for d in m.normalized_shape:
                    width *= d
                n = x.numel() // max(1, width)
                self._touch(row, n)
                ops = _norm_ops(x.numel(), n, m.elementwise_affine)
                row.add(ops, ops)
        self._pre(mod, fn)

    def _attach_neuron(self, name: str, mod: SpikingNeuron) -> None:
        row = self._row(name, "neuron")

        def fn(m: SpikingNeuron, args: tuple, out: Any) -> None:
            s = _spike_output(out)
            if s is None:
                return
            st = _binary_stats(s)
            self._touch(row, s.numel() // max(1, s.shape[-1]))
            n_spk = int(st.spikes_per_layer_step.sum())
            fixed = _neuron_ops(m, s.numel(), 0)
            row.add(fixed)
            row.add_spike_ops({k: v - fixed.get(k, 0) for k, v in _neuron_ops(m, s.numel(), n_spk).items()})
            row.add_spikes(st)

        self._post(mod, fn)

    def _attach_table(self, name: str, mod: nn.Module) -> None:
        """Count ``mod.energy_ops()`` (per token) for every token of the block's input."""
        order = getattr(mod, "ENERGY_ORDER", ())
        table: dict[str, OpRow] = mod.energy_ops()
        rows = {r: self._row(f"{name}.{r}" if name else r, op.kind, op.c_in, op.c_out) for r, op in table.items()}
        for r, op in table.items():
            for child in op.spike_inputs:  # spikes added into the residual: one AC per spike
                self._post(mod.get_submodule(child), self._spike_residual(rows[r], op))

        def fn(m: nn.Module, args: tuple, *out: Any) -> None:
            x = args[0]
            n = x.numel() // max(1, x.shape[-1])
            self._touch_in_order(name, order)
            for r, op in m.energy_ops().items():
                if op.spike_inputs:
                    continue
                per = {k: v * n for k, v in op.ops.items()}
                self._touch(rows[r], n)
                spiking = bool(op.encoder) and isinstance(getattr(m, op.encoder, None), SpikeEncoder)
                rows[r].add({} if spiking else per, per)

        if getattr(mod, "ENERGY_WHEN", "pre") == "post":
            self._post(mod, fn)
        else:
            self._pre(mod, fn)

    def _spike_residual(self, row: Row, op: OpRow) -> Callable[[nn.Module, tuple, Any], None]:
        def fn(m: nn.Module, args: tuple, out: Any) -> None:
            s = _spike_output(out)
            n = s.numel() // max(1, s.shape[-1])
            self._touch(row, n)
            # one accumulate per spike into the residual; the spikes are listed under the neuron
            row.add(None, {k: v * n for k, v in op.ops.items()})
            row.add_spike_ops({"ac": int(torch.count_nonzero(s))})
        return fn


def _encoded_matmul(owner: nn.Module, point: str) -> tuple[str, OpRow] | None:
    """The (row name, op row) of ``owner``'s table whose input hook point is ``point``, if any."""
    if not callable(getattr(owner, "energy_ops", None)):
        return None
    return next(((r, op) for r, op in owner.energy_ops().items() if op.encoder == point), None)
