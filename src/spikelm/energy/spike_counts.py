"""Spike counts of what the energy counters observe, computed outside the model.

:func:`encoder_counts` recounts a spike encoder's spikes per layer and step from its input (equal
to the closed form's statistics, in as few passes over memory as it can: this is the counter's
overhead); :func:`is_binary` and :func:`_binary_stats` tell and count {0, 1} inputs of plain
linear layers and neuron outputs. Used by :mod:`.counters`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..ops.spikes import level_histogram
from ..spiking.encoding import SpikeStats, floor_half_up_, mhse_closed_form, mhse_simulate

__all__ = ["is_binary", "encoder_stats", "encoder_counts", "active_inputs", "EncoderObservation"]

_BINARY_PROBE = 256


def is_binary(x: Tensor) -> bool:
    """True when every value of ``x`` is exactly 0 or 1 (cheap rejection on the first values)."""
    if not x.is_floating_point() or x.numel() == 0:
        return False
    flat = x.detach().reshape(-1)
    probe = flat[:_BINARY_PROBE]
    if not bool(((probe == 0) | (probe == 1)).all()):
        return False
    return bool(((flat == 0) | (flat == 1)).all())


def _binary_stats(x: Tensor) -> SpikeStats:
    nnz = int(torch.count_nonzero(x.detach()))
    return SpikeStats(torch.tensor([[nnz]], dtype=torch.int64), 0, 0, x.numel())


def encoder_stats(x: Tensor, scale: Tensor, T: int, layers: int, base: float = 2.0, n_int: int = 1,
                  init_half: bool = False) -> SpikeStats:
    """Spike counts of encoding ``x`` (see :func:`encoder_counts`)."""
    return encoder_counts(x, scale, T, layers, base, n_int, init_half)[0]


def encoder_counts(x: Tensor, scale: Tensor, T: int, layers: int, base: float = 2.0, n_int: int = 1,
                   init_half: bool = False, scratch: Tensor | None = None) -> tuple[SpikeStats, int]:
    """Spike counts of encoding ``x``: equal to ``mhse_closed_form(..., stats=True)[1]``, cheaper.

    A counter needs the spikes per layer, not the decoded values, so this makes as few passes over
    memory as it can (it runs beside the model's own encoder, and its cost is the counter's
    overhead). With ``u = |x| / (s w_l)``, the magnitude in units of the smallest weight clipped at
    ``2**l - 1``, one step (``T = 1``) emits ``q = floor(u)`` units (``floor(u + 1/2)`` with
    ``init_half``) and layer ``i`` fires where bit ``l - i`` of ``q`` is set: a histogram of ``q``
    (an integer cast, which truncates = floors non-negative values, and ``bincount``) gives every
    layer's count.

    Exactness, as in the closed form: the reference rounds ``|x| / s`` to float32 after a float64
    division, which equals the correctly rounded float32 division (double rounding is innocuous
    for division when 53 >= 2 * 24 + 2 bits), and scaling by the power of two ``2 ** (l - n_int)``
    (folded into the divisor) is exact; ``u + 1/2`` is formed in float64, where it is exact (in
    float32 it can round up to the next integer, e.g. ``u = 1/2 - 2**-25``). For
    ``l = 1`` (rate coding, ``u <= 1``) step ``j`` emits ``q_j - q_{j-1}`` spikes in total, with
    ``q_j = floor(j u + c)`` counted by comparing ``u`` with the thresholds ``(k - c) / j``: a
    float32 ``u`` near a threshold ``p / q >= 1/128`` (``q <= 2T <= 128``) is a multiple of 2**-31,
    so it either equals the fraction (then exact in float64 too) or lies at least
    ``1 / (q 2**31) >= 2**-38`` from it, far beyond the float64 rounding of the threshold: the
    comparisons are exact (``T <= 64``; beyond, the steps are summed one by one in float64).
    ``T > 1`` with ``l > 1`` histograms each step's emission as the reference does. Falls back to
    the reference for other bases (the simulation), float64 inputs, non-float32 scales and
    ``layers > 16``. ``tests/energy/test_energy_counters.py`` checks equality, on values at and
    next to every threshold too.

    ``scratch``: a float32 tensor of at least ``2 * x.numel()`` elements on ``x``'s device that
    this call may overwrite (the counter keeps one and passes it on every call). Without it the
    working arrays are allocated per call, and for activations of a few MB the first touch of fresh
    pages costs more than the arithmetic on them.
    """
    if base != 2.0:  # the closed form is exact for base 2 only
        st = mhse_simulate(x, scale, T, layers, base, n_int, init_half)[1]
        return st, active_inputs(x, scale, T, layers, base, n_int, init_half)
    if x.dtype == torch.float64 or scale.dtype != torch.float32 or layers > 16:
        st = mhse_closed_form(x, scale, T, layers, base, n_int, init_half, stats=True)[1]
        assert st is not None
        return st, active_inputs(x, scale, T, layers, base, n_int, init_half)
    x = x.detach()
    n = x.numel()
    if scratch is None or scratch.numel() < 2 * n or scratch.dtype != torch.float32 or scratch.device != x.device:
        scratch = torch.empty(2 * n, dtype=torch.float32, device=x.device)
    u, tmp = scratch[:n].view(x.shape), scratch[n:2 * n].view(x.shape)
    # Counts are sums of 0/1 (or small integer) floats: exact in float32 while below 2**24. A
    # boolean mask and count_nonzero would cost several times more on a CPU (a byte-wise cast, and
    # a branch per element that mispredicts on spike-like data).
    acc = _acc(n, layers)
    # sign flags, count(x < 0) = -sum(sign(min(x, 0))) (-0.0 adds nothing, as in x < 0)
    flags_t = _negatives(x, tmp, acc)
    _in_units(x, scale.detach().to(x.device) * 2.0 ** (n_int - layers), out=u)  # |x| / (s w_l); s w_l is exact
    bins = 2**layers
    u_max = float(bins - 1)
    top = float(u.amax()) if n else 0.0
    if top != top:  # NaN: the reference says what it makes of it
        st = mhse_closed_form(x, scale, T, layers, base, n_int, init_half, stats=True)[1]
        assert st is not None
        return st, active_inputs(x, scale, T, layers, base, n_int, init_half)
    flags = int(flags_t)
    clipped = 0
    if top > u_max:
        clipped = int(torch.gt(u, u_max, out=tmp).sum(dtype=acc))
        u.clamp_(max=u_max)
    c = 0.5 if init_half else 0.0
    if T == 1:
        if init_half:
            floor_half_up_(u, tmp)  # q = floor(u + 1/2), in place
        # else q = floor(u): the integer cast in _bit_totals truncates, which floors u >= 0
        per_layer, active = _bit_totals(u, layers, tmp)
        return SpikeStats(torch.tensor([per_layer], dtype=torch.int64), flags, clipped, n), active
    counts = torch.zeros((T, layers), dtype=torch.int64)
    if layers == 1 and T <= 64:
        # Rate coding: q_j = floor(j u + c) = #{k = 1..j : u >= (k - c) / j}, so one bucketize of u
        # against the sorted thresholds (k - c) / j (float64; exact comparisons, see below) gives
        # every q_j summed over the values, hence the spikes of each step, q_j - q_{j-1}.
        thr = sorted({(k - c) / j for j in range(1, T + 1) for k in range(1, j + 1)})
        hist = torch.bincount(torch.bucketize(u.double(), torch.tensor(thr, dtype=torch.float64, device=u.device),
                                              right=True).reshape(-1), minlength=len(thr) + 1).tolist()
        at_least = [sum(hist[i + 1:]) for i in range(len(thr))]  # values with u >= thr[i]
        rank = {t: i for i, t in enumerate(thr)}
        q_prev = 0
        for j in range(1, T + 1):
            q_j = sum(at_least[rank[(k - c) / j]] for k in range(1, j + 1))
            counts[j - 1, 0] = q_j - q_prev
            q_prev = q_j
        active = at_least[rank[(1 - c) / T]]  # q_T = floor(T u + c) >= 1
    elif layers == 1:
        u64 = u.double()
        q_prev = 0
        for j in range(1, T + 1):
            q_j = int(torch.floor(u64 * j + c).sum())
            counts[j - 1, 0] = q_j - q_prev
            q_prev = q_j
        active = int(torch.count_nonzero(torch.floor(u64 * T + c)))
    else:
        u64 = u.double()
        q_prev_t, work = torch.zeros_like(u64), torch.empty_like(u64)
        for j in range(1, T + 1):
            q = torch.floor(u64 * j + c)
            counts[j - 1] = torch.tensor(_bit_totals(q - q_prev_t, layers, work)[0])  # step j's emission
            q_prev_t = q
        active = int(torch.count_nonzero(q_prev_t))
    return SpikeStats(counts, flags, clipped, x.numel()), active


def _in_units(x: Tensor, unit: Tensor, out: Tensor) -> Tensor:
    """``|x| / unit`` in float32 into ``out``, the same operations as the encoder's
    (``mhse_decode``): a float32 division, correctly rounded."""
    return (torch.abs(x, out=out) if x.dtype == torch.float32 else out.copy_(x).abs_()).div_(unit)


def _negatives(x: Tensor, tmp: Tensor, acc: torch.dtype) -> Tensor:
    """count(x < 0) (the sign flags) as a 0-d tensor: -sum(sign(min(x, 0))), -0.0 adding nothing
    as in ``x < 0``. ``tmp``: float32 of ``x``'s shape, overwritten."""
    neg = torch.clamp(x, max=0.0, out=tmp) if x.dtype == torch.float32 else tmp.copy_(x).clamp_(max=0.0)
    return neg.sign_().sum(dtype=acc).neg_()


def _acc(n: int, layers: int) -> torch.dtype:
    """Accumulator of counts that are sums of small integer floats: float32 while exact (< 2**24)."""
    return torch.float32 if n * 2**layers < 2**24 else torch.float64


class EncoderObservation:
    """One encoder's spike counts for one forward call, read from its observation point.

    A spike encoder's one-step fast path (:func:`~spikelm.spiking.encoding.mhse_decode`) shows
    its integer levels ``q`` (``SpikeEncoder.levels``), whose bits are the layers' spikes. Hooked
    there, a counter reads them instead of computing them again: one integer code per value,
    ``q + 2**l * [x < 0]`` (level and sign flag), and one histogram of the codes give every
    layer's spikes, the flags and the values that fetch a weight, with one host read. Clipped
    values (``|x| / (s w_l) > 2**l - 1``) are counted from the input as the encoder computes it,
    only where the level is the top one. On the CPU all of it is one compiled pass
    (:func:`spikelm.ops.spikes.level_histogram`); elsewhere, or where it cannot be built, a
    few tensor operations. What :func:`encoder_counts` computes, in fewer passes.
    Any other path (more steps, the simulation, a straight-through forward) shows no levels, and
    the call is counted by :func:`encoder_counts` from the input; so is an input with a NaN.

    Use: ``EncoderObservation(encoder, scratch)``; ``start(x)`` in the encoder's pre-hook,
    ``levels`` as a forward hook of ``encoder.levels``, ``finish()`` in the encoder's forward
    hook. ``scratch(x)`` gives a float32 buffer of at least ``2 * x.numel()`` elements that may be
    overwritten.
    """

    def __init__(self, enc: nn.Module, scratch: Callable[[Tensor], Tensor]) -> None:
        self._enc = enc
        self._scratch = scratch
        self._x: Tensor | None = None
        self._st: tuple[SpikeStats, int] | None = None
        # the spike code is fixed when the encoder is built
        args = enc.encode_args()
        self._layers = layers = int(args["layers"])
        self._n_int = int(args["n_int"])
        self._u_max = float(2**layers - 1)
        # codes q + 2**l * [x < 0] in the smallest integer type (a float -> int8 cast is vectorised)
        self._dt = torch.int8 if layers <= 6 else torch.int16 if layers <= 14 else torch.int32

    def start(self, x: Tensor) -> None:
        self._x, self._st = x.detach(), None

    def levels(self, _mod: object, args: tuple, _out: object) -> None:
        q, x = args[0], self._x
        if x is None or x.numel() == 0:
            return
        layers, n = self._layers, x.numel()
        fast = level_histogram(q, x, self._unit(x), layers, getattr(self._enc, "backend", None))  # one C++ pass where it applies
        if fast is not None:
            hist, clipped, nans = fast
            if nans:  # a NaN: counted by the reference in finish()
                return
            per_layer, silent, flags = _fold_levels(hist, layers)
            self._st = SpikeStats(torch.tensor([per_layer], dtype=torch.int64), flags, clipped, n), n - silent
            return
        top = float(q.amax())
        if top != top:
            return
        scratch = self._scratch(x)
        raw = scratch.view(torch.uint8)
        nb = n * self._dt.itemsize
        code, neg = raw[:nb].view(self._dt), raw[nb: 2 * nb].view(self._dt).view(x.shape)
        code.copy_(q.reshape(-1))
        torch.lt(x, 0, out=neg)
        code.add_(neg.view(-1), alpha=2**layers)
        hist = torch.bincount(raw[:n] if self._dt == torch.int8 else code, minlength=2 ** (layers + 1))
        per_layer, silent, flags = _fold_levels(hist, layers)
        clipped = 0
        if top >= self._u_max:  # some values reached the top level: which of them were clipped?
            clipped = self._clipped(x, scratch[:n].view(x.shape))
        self._st = SpikeStats(torch.tensor([per_layer], dtype=torch.int64), flags, clipped, n), n - silent

    def _unit(self, x: Tensor) -> Tensor:
        """``s w_l``, the encoder's smallest weight times its scale (exact: a power of two)."""
        return self._enc.scale.detach().to(x.device) * 2.0 ** (self._n_int - self._layers)

    def _clipped(self, x: Tensor, u: Tensor) -> int:
        """Values whose ``|x| / (s w_l)``, computed as the encoder computes it, exceeds ``2**l - 1``."""
        _in_units(x, self._unit(x), out=u)
        return int(torch.gt(u, self._u_max, out=u).sum(dtype=_acc(x.numel(), self._layers)))

    def finish(self) -> tuple[SpikeStats, int]:
        x, st = self._x, self._st
        self._x = self._st = None
        assert x is not None, "finish() without start()"
        if st is not None:
            return st
        return encoder_counts(x, self._enc.scale, **self._enc.encode_args(), scratch=self._scratch(x))


@functools.lru_cache(maxsize=None)
def _bit_masks(layers: int) -> tuple[tuple[int, ...], ...]:
    """For each layer ``i = 1..l``, the levels ``q`` in ``[0, 2**l)`` whose bit ``l - i`` is set."""
    return tuple(tuple(k for k in range(2**layers) if k >> (layers - i) & 1) for i in range(1, layers + 1))


def _bit_totals(q: Tensor, layers: int, scratch: Tensor | None = None) -> tuple[list[int], int]:
    """(spikes per layer, values with q >= 1) of integer levels ``q`` in [0, 2**layers - 1], float.

    Layer ``i`` fires where bit ``l - i`` of ``q`` is set: a histogram of the levels gives every
    layer's count. The levels are cast to the smallest integer type that holds them (a byte up to
    eight layers: a quarter of the float32 bytes) and counted by ``bincount``; one pass each, and
    one host read. The cast truncates, which is exact for these integer values. ``scratch``: any
    contiguous tensor of at least ``q.numel()`` int32 words (viewed as bytes) that may be
    overwritten; without it the integer copy is allocated.
    """
    # int8 up to 7 layers (levels <= 127; a float -> int8 cast is vectorised, to uint8 it is
    # several times slower), counted as the same bytes read as uint8; uint8 for 8, int32 beyond
    dt = torch.int8 if layers <= 7 else torch.uint8 if layers == 8 else torch.int32
    n = q.numel()
    nbytes = n * (1 if dt != torch.int32 else 4)
    if scratch is not None and scratch.is_contiguous() and scratch.device == q.device and \
            scratch.numel() * scratch.element_size() >= nbytes:
        qi = scratch.view(-1).view(torch.uint8)[:nbytes].view(dt)
    else:
        qi = torch.empty(n, dtype=dt, device=q.device)
    qi.copy_(q.reshape(-1))
    if dt == torch.int8:
        qi = qi.view(torch.uint8)
    per_layer, silent, _ = _fold_levels(torch.bincount(qi, minlength=2**layers), layers)
    return per_layer, n - silent


def _fold_levels(hist: Tensor | list[int], layers: int) -> tuple[list[int], int, int]:
    """(spikes per layer, values at level 0, values in the second half) of a histogram of integer
    levels ``0 .. 2**l - 1`` (``hist`` of length ``2**l``), or of codes ``q + 2**l * flag``
    (length ``2 * 2**l``: the second half counts the flagged values). Layer ``i`` fires where bit
    ``l - i`` of the level is set. One host read."""
    half = 2**layers
    if layers <= 8:  # a short list: Python sums over the levels of each bit
        h = hist if isinstance(hist, list) else hist.tolist()
        both = [a + b for a, b in zip(h[:half], h[half:])] if len(h) > half else h
        return [sum(both[k] for k in ks) for ks in _bit_masks(layers)], both[0], sum(h[half:])
    hist = torch.tensor(hist) if isinstance(hist, list) else hist
    rows = hist.view(-1, half)
    both = rows.sum(0)
    k = torch.arange(half, device=hist.device)
    bits = torch.stack([(k >> (layers - i)) & 1 for i in range(1, layers + 1)])
    flags = rows[1:].sum().view(1) if rows.shape[0] > 1 else both.new_zeros(1)
    *per_layer, silent, n_flags = torch.cat([(bits * both).sum(1), both[:1], flags]).tolist()
    return per_layer, silent, n_flags


def active_inputs(x: Tensor, scale: Tensor, T: int, layers: int, base: float = 2.0, n_int: int = 1,
                  init_half: bool = False) -> int:
    """Values of ``x`` that emit at least one spike over the ``T`` steps (any layer).

    Over ``T`` steps an encoder emits ``floor(T u + c)`` units of its smallest weight ``s w_l`` in
    total (``u = |x| / (s w_l)``, ``c = 1/2`` with ``init_half``), so a value fires iff
    ``T |x| >= (1 - c) s w_l``; a silent value needs no weight fetch. Compared in float64 (ties at
    the threshold may differ from the float32 reference by one value; it prices memory only).
    """
    unit = scale.detach().to(x.device).double() * float(base) ** (n_int - layers)
    c = 0.5 if init_half else 0.0
    return int(torch.count_nonzero(x.detach().double().abs_().mul_(T) >= unit * (1.0 - c)))
