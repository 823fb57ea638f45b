"""Weight matrices stored at a lower precision and dequantised where they are used.

``quantize_weights(model, bits)`` stores every weight matrix of a model at ``bits``:

* **8**: symmetric int8 per output channel: ``q = round(w / s)`` in [-127, 127] with
  ``s = max |w| / 127`` over the channel's inputs, kept as an int8 tensor plus a float32 scale per
  output channel; the forward uses ``q * s`` (dequantised in float32, then cast to the
  activations' dtype), so perplexity is measured at that precision;
* **16**: IEEE fp16 (no scale), cast to the activations' dtype in the forward;
* **32**: float32 parameters (a quantised model is dequantised back; its values stay on the grid
  they were rounded to).

Which matrices (a careful reading, ``docs/energy.md``): every ``nn.Linear`` (the spike-driven ones
of a converted model too), the bare low-rank matrices a block multiplies by (RWKV-6's
``time_maa_w1/w2`` and ``time_decay_w1/w2``, RWKV-7's ``w1/w2``, ``a1/a2``, ``v1/v2``, ``g1/g2``,
declared by each block as ``WEIGHT_MATRICES``), and by default the LM head and the embedding
(``head=False`` / ``embedding=False`` keep them float32). The energy tables price every weight
the network reads at the chosen width, so by default every weight is stored at it; keeping the
head or the embedding at float32 is the common choice of weight-only LLM quantisation and is
there for ablations. Vectors (norms, token-shift mixes, decays, bonuses) stay float32: they are
not weights of a product, and less than 1% of the bytes.

A quantised matrix is a :class:`QuantizedMatrix` module in the place of the parameter (state dict
``<name>.q`` and ``<name>.scale``), so a model saved with ``spikelm.save`` round-trips: its
``config.json`` records :class:`~spikelm.config.WeightQuantConfig`, and loading quantises the
skeleton before the stored values are assigned. The matrices become buffers: training or
fine-tuning changes only the parameters left (quantise after fine-tuning weights).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
from torch import Tensor, nn

from ..config import WEIGHT_BITS, EncodingConfig, WeightQuantConfig
from ..errors import SpikelmError
from ..ops.linear import Linear, linear
from ..spiking.layers import SpikeEncoder, SpikingLinear

log = logging.getLogger(__name__)

__all__ = ["QuantizedMatrix", "QuantizedLinear", "QuantizedSpikingLinear", "QuantizedEmbedding", "quantize_tensor",
           "quantize_weights", "dense", "weight_bits", "weight_quantization", "spiking_twin", "plain_twin",
           "dequantized_state_dict"]

INT8_MAX = 127  # symmetric: [-127, 127], so -q is always representable
_BLOCK_FLOATS = 2**24  # dequantise at most 64 MiB of float32 at a time (a large head)


def quantize_tensor(w: Tensor, bits: int, in_axis: int = -1) -> tuple[Tensor, Tensor | None]:
    """``(q, scale)`` of ``w`` at ``bits``: int8 and a float32 scale per output channel (the maximum
    of ``|w|`` over ``in_axis`` / 127, shape of ``w`` with that axis 1), or fp16 and None at 16 bits.

    An all-zero channel gets scale 1 (its q is 0). Rounding is to nearest, ties to even.
    """
    if bits == 16:
        return w.detach().to(torch.float16), None
    if bits != 8:
        raise SpikelmError(f"weights are stored at 8 or 16 bits (32: float32, not quantised), got {bits}")
    wf = w.detach().float()
    amax = wf.abs().amax(dim=in_axis, keepdim=True)
    scale = torch.where(amax > 0, amax / INT8_MAX, torch.ones_like(amax))
    q = torch.round(wf / scale).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


class QuantizedMatrix(nn.Module):
    """A weight matrix stored at 8 bits (``q`` int8 and ``scale`` float32 per output channel) or 16
    bits (``q`` fp16), in the place of the parameter it replaces.

    It answers ``shape``, ``dtype`` (the dtype it dequantises to by default: the model's, following
    ``.to()`` / ``.half()`` casts), ``device``, ``numel()`` and ``dim()`` as the parameter did, so code
    that reads a weight's metadata (``emb.weight.device``) keeps working. Casting the model never
    changes ``q`` or ``scale`` (an fp16 ``q`` is not widened, a float32 scale not rounded).
    ``in_axis``: the axis of the inputs (-1 for an ``nn.Linear`` weight (out, in) and an embedding
    (vocabulary, width: one scale per row); -2 for a matrix used as ``x @ W``).
    """

    def __init__(self, shape: tuple[int, ...], bits: int, in_axis: int = -1, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        super().__init__()
        if bits not in (8, 16):
            raise SpikelmError(f"a quantised matrix has 8 or 16 bits, got {bits}")
        self.bits, self.in_axis, self._dtype = bits, in_axis, dtype
        self.register_buffer("q", torch.empty(shape, dtype=torch.int8 if bits == 8 else torch.float16, device=device))
        if bits == 8:
            sshape = list(shape)
            sshape[in_axis] = 1
            self.register_buffer("scale", torch.ones(sshape, dtype=torch.float32, device=device))

    @classmethod
    def of(cls, w: Tensor, bits: int, in_axis: int = -1) -> QuantizedMatrix:
        """``w`` quantised (see :func:`quantize_tensor`); dequantises to ``w``'s dtype."""
        dtype = w.dtype if w.is_floating_point() else torch.float32
        m = cls(tuple(w.shape), bits, in_axis, dtype, device="meta")
        q, scale = quantize_tensor(w, bits, in_axis)
        m.q = q
        if scale is not None:
            m.scale = scale
        return m

    # ---------------------------------------------------------------- what a parameter answers
    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self.q.device

    def numel(self) -> int:
        return self.q.numel()

    def dim(self) -> int:
        return self.q.dim()

    def nbytes(self) -> int:
        """Bytes stored: the values and the scales."""
        s = getattr(self, "scale", None)
        return self.q.numel() * self.q.element_size() + (0 if s is None else s.numel() * s.element_size())

    # ---------------------------------------------------------------- use
    def dequantized(self, dtype: torch.dtype | None = None, rows: slice | None = None) -> Tensor:
        """The matrix (or the output rows ``rows`` of an (out, in) matrix) as ``dtype`` (default: the model's)."""
        dtype = dtype or self._dtype
        q = self.q if rows is None else self.q[rows]
        if self.bits == 16:
            return q.to(dtype)
        s = self.scale if rows is None else self.scale[rows]
        return (q.float() * s).to(dtype)

    def lookup(self, idx: Tensor) -> Tensor:
        """Rows ``idx`` of an embedding table, dequantised (only the rows read)."""
        q = nn.functional.embedding(idx, self.q)
        if self.bits == 16:
            return q.to(self._dtype)
        return (q.float() * nn.functional.embedding(idx, self.scale)).to(self._dtype)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> QuantizedMatrix:  # type: ignore[override]
        # A cast of the model (.to(dtype), .half(), .float()) changes the dtype the matrix is used in,
        # never what it stores; a move takes the new device.
        kept = {n: b for n, b in self._buffers.items() if b is not None}
        probe = fn(torch.empty(0, dtype=self._dtype, device=self.q.device))
        super()._apply(fn, recurse)
        for n, old in kept.items():
            new = self._buffers[n]
            if new is not None and new.dtype != old.dtype:
                self._buffers[n] = old.to(new.device)
        if probe.is_floating_point():
            self._dtype = probe.dtype
        return self

    def extra_repr(self) -> str:
        kind = "int8, a float32 scale per output channel" if self.bits == 8 else "fp16"
        return f"{tuple(self.q.shape)}, {kind}, used as {str(self._dtype).replace('torch.', '')}"


def dense(w: Tensor | QuantizedMatrix, dtype: torch.dtype) -> Tensor:
    """A weight matrix ready for a product in ``dtype``: a parameter as it is (no copy), a
    :class:`QuantizedMatrix` dequantised. What a model's forward calls on its bare matrices."""
    return w.dequantized(dtype) if isinstance(w, QuantizedMatrix) else w


def _product(x: Tensor, w: QuantizedMatrix, bias: Tensor | None) -> Tensor:
    """``x @ W^T + b`` with ``W`` dequantised (by blocks of output rows for a large matrix, so the
    float copy stays under 64 MiB), the product through :func:`spikelm.ops.linear.linear`."""
    out_f, in_f = w.shape
    rows = max(1, _BLOCK_FLOATS // max(1, in_f))
    if out_f <= rows:
        return linear(x, w.dequantized(x.dtype), bias)
    out = torch.empty(*x.shape[:-1], out_f, dtype=x.dtype, device=x.device)
    for i in range(0, out_f, rows):
        sl = slice(i, i + rows)
        out[..., sl] = linear(x, w.dequantized(x.dtype, sl), None if bias is None else bias[sl])
    return out


class QuantizedLinear(Linear):
    """``nn.Linear`` whose ``weight`` is a :class:`QuantizedMatrix` (state dict ``weight.q``, ``weight.scale``)."""

    def forward(self, x: Tensor) -> Tensor:
        return _product(x, self.weight, self.bias)


class QuantizedSpikingLinear(SpikingLinear):
    """:class:`~spikelm.spiking.layers.SpikingLinear` (spike-encoded input) with a :class:`QuantizedMatrix` weight."""

    def forward(self, x: Tensor) -> Tensor:
        return _product(self.encoder(x), self.weight, self.bias)


class QuantizedEmbedding(nn.Embedding):
    """``nn.Embedding`` whose table is a :class:`QuantizedMatrix` (one scale per row, i.e. per token)."""

    def forward(self, idx: Tensor) -> Tensor:
        return self.weight.lookup(idx)


def _swap_linear(mod: nn.Linear, weight: QuantizedMatrix | Tensor) -> nn.Linear:
    """``mod`` rebuilt around ``weight`` (quantised: a Quantized* class; a tensor: the plain class),
    sharing its bias and encoder."""
    spiking = isinstance(mod, SpikingLinear)
    if isinstance(weight, QuantizedMatrix):
        cls: type[nn.Linear] = QuantizedSpikingLinear if spiking else QuantizedLinear
    else:
        cls = SpikingLinear if spiking else Linear
    with torch.device("meta"):  # the weight, bias and encoder are the old module's
        new = cls(mod.in_features, mod.out_features, EncodingConfig()) if spiking else \
            cls(mod.in_features, mod.out_features, bias=False)
    del new.weight
    new.weight = weight if isinstance(weight, QuantizedMatrix) else nn.Parameter(weight, requires_grad=weight.is_floating_point())
    new.bias = mod.bias
    if spiking:
        new.encoder = mod.encoder
    new.train(mod.training)
    return new


def spiking_twin(mod: nn.Linear, encoder: SpikeEncoder) -> SpikingLinear:
    """The spiking linear that feeds ``mod``'s weight (shared, quantised or not) through ``encoder``."""
    with torch.device("meta"):
        new = (QuantizedSpikingLinear if isinstance(mod.weight, QuantizedMatrix) else SpikingLinear)(
            mod.in_features, mod.out_features, EncodingConfig())
    del new.weight
    new.weight = mod.weight
    new.bias = mod.bias
    new.encoder = encoder
    return new


def plain_twin(mod: SpikingLinear) -> Linear:
    """The linear layer without ``mod``'s encoder, sharing its weight (quantised or not) and bias."""
    with torch.device("meta"):
        new = (QuantizedLinear if isinstance(mod.weight, QuantizedMatrix) else Linear)(
            mod.in_features, mod.out_features, bias=mod.bias is not None)
    del new.weight
    new.weight = mod.weight
    if mod.bias is not None:
        new.bias = mod.bias
    return new


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def weight_quantization(model: nn.Module) -> WeightQuantConfig | None:
    """How ``model``'s weights are stored (None: as float parameters, not quantised)."""
    return getattr(model, "weight_quantization", None)


def weight_bits(model: nn.Module) -> int:
    """The width of ``model``'s weight matrices: the quantisation's bits, else the width of its
    float weights (32 for float32, 16 for bf16/fp16 models)."""
    wq = weight_quantization(model)
    if wq is not None:
        return wq.bits
    for m in model.modules():
        if isinstance(m, nn.Linear) and isinstance(m.weight, Tensor):
            return 8 * m.weight.element_size()
    p = next(model.parameters(), None)
    return 32 if p is None else 8 * p.element_size()


def _targets(model: nn.Module, head: bool, embedding: bool) -> list[tuple[str, nn.Module, str, int]]:
    """(module name, module, attribute, input axis) of every weight matrix to store quantised."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            if name == "head" and not head:
                continue
            out.append((name, mod, "weight", -1))
        elif isinstance(mod, nn.Embedding):
            if embedding:
                out.append((name, mod, "weight", -1))
        for attr in getattr(mod, "WEIGHT_MATRICES", ()):
            if hasattr(mod, attr):
                out.append((name, mod, attr, -2))
    return out


def _dequantize(model: nn.Module) -> None:
    """Every :class:`QuantizedMatrix` back to a float parameter of the dtype it is used in."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, (QuantizedLinear, QuantizedSpikingLinear)):
            _set(model, name, _swap_linear(mod, mod.weight.dequantized()))
        elif isinstance(mod, QuantizedEmbedding):
            w = nn.Parameter(mod.weight.dequantized())
            with torch.device("meta"):
                new = nn.Embedding(mod.num_embeddings, mod.embedding_dim)
            new.weight = w
            _set(model, name, new)
    for mod in model.modules():
        for attr, child in list(mod._modules.items()):
            if isinstance(child, QuantizedMatrix):
                w = child.dequantized()
                del mod._modules[attr]
                mod.register_parameter(attr, nn.Parameter(w))
    model.weight_quantization = None


def quantize_weights(model: nn.Module, bits: int, *, head: bool = True, embedding: bool = True) -> nn.Module:
    """Store ``model``'s weight matrices at ``bits`` (8: int8 per output channel; 16: fp16; 32: float),
    in place; returns the model. See the module docstring for which matrices.

    Works on plain and converted (spiking) models alike; a model already stored at another setting
    is dequantised first (so 8 -> 16 keeps the 8-bit grid's values at fp16). Records the setting as
    ``model.weight_quantization`` (saved in ``config.json`` by ``spikelm.save``).
    """
    if bits not in WEIGHT_BITS:
        raise SpikelmError(f"--weight-bits must be one of {', '.join(map(str, WEIGHT_BITS))}, got {bits!r}")
    want = None if bits == 32 else WeightQuantConfig(bits=bits, head=head, embedding=embedding)
    if weight_quantization(model) == want:
        return model
    if weight_quantization(model) is not None:
        _dequantize(model)
    if want is None:
        model.weight_quantization = None
        return model
    with torch.no_grad():
        for name, mod, attr, axis in _targets(model, head, embedding):
            w = getattr(mod, attr)
            if isinstance(w, QuantizedMatrix):
                continue
            qm = QuantizedMatrix.of(w, bits, axis)
            if isinstance(mod, nn.Linear):
                _set(model, name, _swap_linear(mod, qm))
            elif isinstance(mod, nn.Embedding):
                with torch.device("meta"):
                    new = QuantizedEmbedding(mod.num_embeddings, mod.embedding_dim)
                del new.weight
                new.weight = qm
                _set(model, name, new)
            else:
                delattr(mod, attr)
                setattr(mod, attr, qm)
    model.weight_quantization = want
    log.debug("weights stored at %d bits (head %s, embedding %s)", bits, head, embedding)
    return model


def dequantized_state_dict(model: nn.Module, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """``model``'s state dict with every quantised matrix as one float tensor under the parameter's
    own name (the official layout), for exporters that know nothing of quantisation."""
    out: dict[str, Tensor] = {}
    quantized = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedMatrix)}
    for k, v in model.state_dict().items():
        owner, _, leaf = k.rpartition(".")
        if owner in quantized:
            if leaf == "q":
                out[owner] = quantized[owner].dequantized(dtype)
            continue
        out[k] = v.to(dtype) if v.is_floating_point() else v
    return out
