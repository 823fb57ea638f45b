"""What a block costs per token: the op tables the energy counters read (torch-free).

Every model declares, next to each of its blocks, the arithmetic that block does per token beyond
its ``nn.Linear``/norm/neuron children (which the counters price by their own shapes): a method
``energy_ops() -> dict[str, OpRow]`` and a class attribute ``ENERGY_ORDER``, the forward order of
the rows of the block and its children (reports list rows in that order). ``ENERGY_WHEN = "post"``
counts a block after its children (residual adds), otherwise before them.

Operation kinds (priced in :mod:`spikelm.energy.constants`): ``mac`` multiply-accumulate, ``mul``
/ ``add`` elementwise (a comparison, max, ReLU or clamp is one ``add``), ``special`` exp / tanh /
sigmoid / division / (reciprocal) square root. The conventions are listed in
:mod:`spikelm.energy.counters` and ``docs/energy.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["OpRow", "ROW_KINDS", "matmul_row"]

# What a row counts: a linear layer (``nn.Linear`` or a bare matmul), elementwise arithmetic, a
# recurrence, a normalisation, an encoder's neurons, other spiking neurons, residual adds, or the
# embedding look-up.
ROW_KINDS = ("linear", "elementwise", "wkv", "norm", "encode", "neuron", "residual", "embedding")


@dataclass(frozen=True)
class OpRow:
    """One row of a block's op table: ``ops`` per token (the same in the ANN unless said).

    ``c_in`` / ``c_out``: the shape of a bare matmul row (``kind="linear"``; MACs = c_in * c_out).
    ``encoder``: for such a row, the attribute of the block that holds its input hook point
    (``nn.Identity`` in the ANN); when a conversion puts a spike encoder there, the row's dense
    MACs run as spike-driven accumulates instead (counted from the encoder's spikes).
    ``spike_inputs``: children whose output spikes are added into the residual stream: one
    accumulate per spike instead of the dense ``ops`` (SpikeGPT's LIF outputs).
    """

    kind: str
    ops: dict[str, int] = field(default_factory=dict)
    c_in: int = 0
    c_out: int = 0
    encoder: str = ""
    spike_inputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in ROW_KINDS:
            raise ValueError(f"op row kind {self.kind!r}; kinds: {', '.join(ROW_KINDS)}")


def matmul_row(c_in: int, c_out: int, encoder: str = "") -> OpRow:
    """A bare matmul ``x @ W`` (W of shape (c_in, c_out)): c_in * c_out MACs per token."""
    return OpRow("linear", {"mac": c_in * c_out}, c_in, c_out, encoder)
