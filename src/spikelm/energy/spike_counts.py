"""Spike counts of what the energy counters observe, computed outside the model.

:func:`encoder_counts` recounts a spike encoder's spikes per layer and step from its input (equal
to the closed form's statistics, in as few passes over memory as it can: this is the counter's
overhead); :func:`is_binary` and :func:`_binary_stats` tell and count {0, 1} inputs of plain
linear layers and neuron outputs. Used by :mod:`.counters`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..spiking.encoding import SpikeStats, floor_half_up_, mhse_closed_form, mhse_simulate

__all__ = ["is_binary", "encoder_stats", "encoder_counts", "active_inputs"]

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
    acc = torch.float32 if n * 2**layers < 2**24 else torch.float64
    # sign flags, count(x < 0) = -sum(sign(min(x, 0))) (-0.0 adds nothing, as in x < 0)
    flags_t = torch.clamp(x, max=0.0, out=tmp).sign_().sum(dtype=acc) if x.dtype == torch.float32 else \
        tmp.copy_(x).clamp_(max=0.0).sign_().sum(dtype=acc)
    unit = scale.detach().to(x.device) * 2.0 ** (n_int - layers)  # s * w_l, exact
    (torch.abs(x, out=u) if x.dtype == torch.float32 else u.copy_(x).abs_()).div_(unit)  # |x| in units of w_l
    bins = 2**layers
    u_max = float(bins - 1)
    top, flags = torch.stack([u.amax().double() if n else flags_t.new_zeros((), dtype=torch.float64), flags_t.double()]).tolist()
    if top != top:  # NaN: the reference says what it makes of it
        st = mhse_closed_form(x, scale, T, layers, base, n_int, init_half, stats=True)[1]
        assert st is not None
        return st, active_inputs(x, scale, T, layers, base, n_int, init_half)
    flags = int(-flags)
    clipped = 0
    if top > u_max:
        clipped = int(torch.gt(u, u_max, out=tmp).sum(dtype=acc))
        u.clamp_(max=u_max)
    counts = torch.zeros((T, layers), dtype=torch.int64)
    c = 0.5 if init_half else 0.0
    if T == 1:
        if init_half:
            floor_half_up_(u, tmp)  # q = floor(u + 1/2), in place
        else:
            u.floor_()  # q = floor(u), in place
        per_layer, active = _bit_totals(u, layers, tmp, acc)
        counts[0] = torch.tensor(per_layer)
    elif layers == 1 and T <= 64:
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
            counts[j - 1] = torch.tensor(_bit_totals(q - q_prev_t, layers, work, torch.float64)[0])  # step j's emission
            q_prev_t = q
        active = int(torch.count_nonzero(q_prev_t))
    return SpikeStats(counts, flags, clipped, x.numel()), active


def _bit_totals(q: Tensor, layers: int, tmp: Tensor, acc: torch.dtype) -> tuple[list[int], int]:
    """(spikes per layer, values with q >= 1) of integer levels ``q`` in [0, 2**layers - 1], float.

    Layer ``i`` fires where bit ``l - i`` of ``q`` is set, and the values with bit ``b`` set number
    ``S_b - 2 S_{b+1}`` with ``S_b = sum(floor(q / 2**b))`` (``S_l = 0``). Each ``S_b`` is one
    in-place halving and floor (exact: small non-negative integers) and one sum. All in float32,
    without the integer casts and ``bincount`` of a histogram: those convert and scatter element by
    element and cost about twice as much on a CPU. The sums accumulate in ``acc`` (float32 is
    exact while every partial sum stays below 2**24). ``q`` and ``tmp`` (same shape) are overwritten.
    """
    sums = [torch.clamp(q, max=1.0, out=tmp).sum(dtype=acc), q.sum(dtype=acc)]  # values that emit, S_0
    for _ in range(1, layers):
        sums.append(q.mul_(0.5).floor_().sum(dtype=acc))
    active, *s = (int(v) for v in torch.stack(sums).tolist())
    s.append(0)
    return [s[layers - i] - 2 * s[layers - i + 1] for i in range(1, layers + 1)], active


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
